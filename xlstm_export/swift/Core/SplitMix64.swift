// SplitMix64: the seeded generator of xlstm-export's sampling, the same in Swift and in Python
// (xlstm_export/text/rng.py), so the same logits and seed pick the same tokens in both.
//
//   state = state + 0x9E3779B97F4A7C15            (mod 2^64; the first output comes after one increment)
//   z = state
//   z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9      (mod 2^64)
//   z = (z ^ (z >> 27)) * 0x94D049BB133111EB      (mod 2^64)
//   output z ^ (z >> 31)
//
// nextUnit() is a Double in [0, 1): the output's top 53 bits times 2^-53, (next() >> 11) * 0x1p-53, exact.
// The seed is the generator's first state (a Python int seed is taken mod 2^64).

public struct SplitMix64: RandomNumberGenerator, Sendable {
    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A Double in [0, 1) with 53 random bits: `Double(next() >> 11) * 0x1p-53`.
    public mutating func nextUnit() -> Double {
        Double(next() >> 11) * 0x1p-53
    }
}
