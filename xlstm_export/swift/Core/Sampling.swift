#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// The one sampling function, step for step the same as Python's xlstm_export/text/generation.py `pick`:
//
// - greedy (temperature 0): the first maximum (NaN counts as -inf), as torch.argmax;
// - else, in Double: x = Double(logit) / temperature (NaN -> -inf); then top-k (keep every x >= the k-th
//   largest, ties with it included); then top-p (tokens by descending x, ties by index; p = exp(x - max),
//   normalised by their sequential sum; a token is dropped when the cumulative mass before it >= topP;
//   the first is always kept); then one draw u = rng.nextUnit() * W, where W is the sequential sum of the
//   kept tokens' weights exp(x - max) in index order, and the token is the first whose running sum > u.
// Every sum is sequential in index (or sorted) order, in both languages, so only exp itself (the
// platform's libm) could differ, by an ulp, in the last bit of a weight.

public enum SamplingError: Error, Equatable, CustomStringConvertible {
    case noFiniteLogit
    case invalidOption(String)

    public var description: String {
        switch self {
        case .noFiniteLogit: return "generation: the model returned no finite logit at this position"
        case .invalidOption(let what): return what
        }
    }
}

/// How the next token is chosen: greedy when `temperature` is 0, else sampling.
public struct SamplingOptions: Sendable, Equatable {
    public var temperature: Double  // 0: greedy
    public var topK: Int  // 0: off
    public var topP: Double  // 1: off
    public var seed: UInt64

    public init(temperature: Double = 0, topK: Int = 0, topP: Double = 1, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
    }

    public var isGreedy: Bool { temperature == 0 }

    /// The same checks as Python's `Sampling`.
    public func validate() throws {
        guard temperature >= 0 && temperature.isFinite else {
            throw SamplingError.invalidOption("temperature must be a finite number >= 0 (0: greedy), got \(temperature)")
        }
        guard topK >= 0 else { throw SamplingError.invalidOption("topK must be >= 0 (0: off), got \(topK)") }
        guard topP > 0 && topP <= 1 else {
            throw SamplingError.invalidOption("topP must be in (0, 1] (1: off), got \(topP)")
        }
    }
}

public enum Sampler {
    /// The first maximum of `logits` (NaN counts as -inf); nil when no logit is finite.
    public static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int? {
        var best = -1
        var top = -Float.infinity
        for (i, v) in logits.enumerated() where !v.isNaN {
            if best < 0 || v > top {
                best = i
                top = v
            }
        }
        return best < 0 || !logits.contains(where: { $0.isFinite }) ? nil : best
    }

    /// The next token from one position's logits (see the file's comment). Draws once from `rng` unless greedy.
    public static func pick(_ logits: UnsafeBufferPointer<Float>, _ options: SamplingOptions,
                            _ rng: inout SplitMix64) throws -> Int {
        guard logits.contains(where: { $0.isFinite }) else { throw SamplingError.noFiniteLogit }
        if options.isGreedy {
            guard let best = argmax(logits) else { throw SamplingError.noFiniteLogit }
            return best
        }
        let n = logits.count
        var x = [Double](repeating: -.infinity, count: n)
        for i in 0..<n where !logits[i].isNaN { x[i] = Double(logits[i]) / options.temperature }
        if options.topK > 0 && options.topK < n {
            let kth = x.sorted(by: >)[options.topK - 1]
            for i in 0..<n where x[i] < kth { x[i] = -.infinity }
        }
        if options.topP < 1 {
            // descending x, ties by index (a stable sort of -x)
            let order = x.indices.sorted { x[$0] > x[$1] || (x[$0] == x[$1] && $0 < $1) }
            let first = x[order[0]]
            var p = order.map { exp(x[$0] - first) }
            var total = 0.0
            for v in p { total += v }
            for j in p.indices { p[j] /= total }
            var before = 0.0
            var drop: [Int] = []
            for (j, i) in order.enumerated() {
                if before >= options.topP { drop.append(i) }
                before += p[j]
            }
            for i in drop { x[i] = -.infinity }
        }
        var top = -Double.infinity
        for v in x where v > top { top = v }
        if top == .infinity, let i = x.firstIndex(of: .infinity) {
            _ = rng.nextUnit()
            return i
        }
        var kept: [Int] = []
        var running: [Double] = []
        var sum = 0.0
        for i in 0..<n where x[i] > -.infinity {
            sum += exp(x[i] - top)
            kept.append(i)
            running.append(sum)
        }
        let u = rng.nextUnit() * sum
        for (j, c) in running.enumerated() where c > u { return kept[j] }
        return kept[kept.count - 1]
    }

    /// `pick` over an array.
    public static func pick(_ logits: [Float], _ options: SamplingOptions, _ rng: inout SplitMix64) throws -> Int {
        try logits.withUnsafeBufferPointer { try pick($0, options, &rng) }
    }
}
