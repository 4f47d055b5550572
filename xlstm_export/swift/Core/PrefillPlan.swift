// How a prompt of L tokens goes through a model with a prefill function of `chunk` tokens: floor(L / chunk)
// prefill calls of `chunk` tokens, then L mod chunk step calls, the same plan as Python's
// xlstm_export/contract.py `PrefillPlan.calls`. A chunk of 0 means no prefill function: L step calls.

public struct PrefillPlan: Sendable, Equatable {
    public enum Via: String, Sendable { case prefill, step }

    public struct Call: Sendable, Equatable {
        public let start: Int
        public let stop: Int
        public let via: Via
    }

    public let chunk: Int

    public init(chunk: Int) { self.chunk = max(0, chunk) }

    /// The number of prefill calls and of step calls for a prompt of `length` tokens.
    public func counts(_ length: Int) -> (prefill: Int, steps: Int) {
        guard chunk > 0 else { return (0, max(0, length)) }
        return (length / chunk, length % chunk)
    }

    /// Each call in order: `[start, stop)` of the prompt and which function takes it.
    public func calls(_ length: Int) -> [Call] {
        let (p, s) = counts(length)
        var out: [Call] = []
        out.reserveCapacity(p + s)
        for c in 0..<p { out.append(Call(start: c * chunk, stop: (c + 1) * chunk, via: .prefill)) }
        for t in (p * chunk)..<(p * chunk + s) { out.append(Call(start: t, stop: t + 1, via: .step)) }
        return out
    }
}
