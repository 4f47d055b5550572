// The generation loop, the same as Python's xlstm_export/text/generation.py `generate_tokens`: the prompt
// through the model (prefill calls, then steps: `PrefillPlan`), then one token at a time, each picked by
// `Sampler.pick`, until an EOS token (included in the result) or `maxNewTokens`. It checks for Task
// cancellation before every model call and throws `CancellationError` when the task is cancelled.

public enum GenerationError: Error, Equatable, CustomStringConvertible {
    case emptyPrompt
    case noPrefillFunction

    public var description: String {
        switch self {
        case .emptyPrompt: return "generation needs a prompt of at least one token"
        case .noPrefillFunction: return "prefill: this model has no prefill function (prefillChunk is 0)"
        }
    }
}

/// What to generate.
public struct GenerationOptions: Sendable, Equatable {
    public var maxNewTokens: Int
    public var sampling: SamplingOptions
    public var stopAtEOS: Bool

    public init(maxNewTokens: Int = 64, temperature: Double = 0, topK: Int = 0, topP: Double = 1,
                seed: UInt64 = 0, stopAtEOS: Bool = true) {
        self.maxNewTokens = maxNewTokens
        self.sampling = SamplingOptions(temperature: temperature, topK: topK, topP: topP, seed: seed)
        self.stopAtEOS = stopAtEOS
    }
}

public enum StopReason: String, Sendable, Equatable {
    case eos, length
}

public struct GenerationResult: Sendable, Equatable {
    public var tokens: [Int]
    public var stop: StopReason
}

/// A model as the loop sees it: one prefill call of `prefillChunk` tokens (when it has one) and one step,
/// each returning the last position's logits of sequence 0 (vocabulary-sized), with the recurrent state
/// kept by the model between calls.
public protocol TokenStepper {
    var prefillChunk: Int { get }  // 0: no prefill function
    mutating func prefill(_ tokens: ArraySlice<Int>) async throws -> [Float]
    mutating func step(_ token: Int) async throws -> [Float]
}

extension TokenStepper {
    /// A model without a prefill function takes its prompt step by step.
    public var prefillChunk: Int { 0 }

    public mutating func prefill(_ tokens: ArraySlice<Int>) async throws -> [Float] {
        throw GenerationError.noPrefillFunction
    }
}

public enum Generation {
    /// The prompt through the model as `PrefillPlan(chunk: model.prefillChunk)` says; the last call's logits.
    public static func feed<M: TokenStepper>(_ prompt: [Int], into model: inout M) async throws -> [Float] {
        guard !prompt.isEmpty else { throw GenerationError.emptyPrompt }
        var last: [Float] = []
        for call in PrefillPlan(chunk: model.prefillChunk).calls(prompt.count) {
            try Task.checkCancellation()
            switch call.via {
            case .prefill: last = try await model.prefill(prompt[call.start..<call.stop])
            case .step: last = try await model.step(prompt[call.start])
            }
        }
        return last
    }

    /// New tokens after `prompt`; `onToken` sees each token as it is picked.
    public static func run<M: TokenStepper>(_ prompt: [Int], model: inout M, options: GenerationOptions,
                                            eosTokenIds: Set<Int>,
                                            onToken: (Int) throws -> Void = { _ in }) async throws -> GenerationResult {
        try options.sampling.validate()
        guard !prompt.isEmpty else { throw GenerationError.emptyPrompt }
        var out: [Int] = []
        guard options.maxNewTokens > 0 else { return GenerationResult(tokens: out, stop: .length) }
        var rng = SplitMix64(seed: options.sampling.seed)
        var logits = try await feed(prompt, into: &model)
        while true {
            let token = try Sampler.pick(logits, options.sampling, &rng)
            out.append(token)
            try onToken(token)
            if options.stopAtEOS && eosTokenIds.contains(token) { return GenerationResult(tokens: out, stop: .eos) }
            if out.count >= options.maxNewTokens { return GenerationResult(tokens: out, stop: .length) }
            try Task.checkCancellation()
            logits = try await model.step(token)
        }
    }
}
