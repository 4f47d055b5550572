import Foundation
import XCTest

@testable import XLSTMCore

// Golden vectors written by tests/test_swift.py from xlstm_export's Python (XLSTM_SWIFT_GOLDEN).
struct Golden: Decodable {
    struct RNG: Decodable {
        let seed: String  // decimal UInt64
        let outputs: [String]  // decimal UInt64
        let units: [Double]
    }
    struct Sampling: Decodable {
        let name: String
        let logits: [[Double]]
        let temperature: Double
        let topK: Int
        let topP: Double
        let seed: String
        let maxNewTokens: Int
        let eos: [Int]
        let tokens: [Int]
        let stop: String
    }
    struct Plan: Decodable {
        let chunk: Int
        let length: Int
        let calls: [[String]]  // [start, stop, via]
    }
    struct Stream: Decodable {
        let table: [[UInt8]]
        let tokens: [Int]
        let pieces: [String]
        let flush: String
        let text: String
    }
    struct Snapshot: Decodable {
        struct Entry: Decodable {
            let name: String
            let shape: [Int]
            let hex: String
        }
        let path: String
        let entries: [Entry]
    }
    struct Strided: Decodable {
        let shape: [Int]
        let strides: [Int]
        let elementSize: Int
        let buffer: String
        let contiguous: String
    }
    let rng: [RNG]
    let snapshot: Snapshot
    let strided: Strided
    let sampling: [Sampling]
    let plans: [Plan]
    let stream: Stream

    static let shared: Golden? = {
        guard let path = ProcessInfo.processInfo.environment["XLSTM_SWIFT_GOLDEN"] else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(Golden.self, from: data)
    }()

    static func load() throws -> Golden {
        guard let g = shared else {
            throw XCTSkip("XLSTM_SWIFT_GOLDEN is not set or not readable: tests/test_swift.py writes it")
        }
        return g
    }
}

func bytes(hex: String) -> [UInt8] {
    var out: [UInt8] = []
    var it = hex.utf8.makeIterator()
    while let a = it.next(), let b = it.next() {
        out.append(UInt8(String(decoding: [a, b], as: UTF8.self), radix: 16) ?? 0)
    }
    return out
}

/// A model that returns a fixed logits sequence, one row per call, and records its calls.
struct ScriptedModel: TokenStepper {
    let rows: [[Float]]
    var prefillChunk: Int = 0
    var calls: [(via: String, tokens: [Int])] = []
    var cancelAfter: Int? = nil

    init(rows: [[Float]], prefillChunk: Int = 0) {
        self.rows = rows
        self.prefillChunk = prefillChunk
    }

    mutating func next(_ via: String, _ tokens: [Int]) -> [Float] {
        calls.append((via, tokens))
        if let n = cancelAfter, calls.count >= n { withUnsafeCurrentTask { $0?.cancel() } }
        return rows[min(calls.count - 1, rows.count - 1)]
    }

    mutating func prefill(_ tokens: ArraySlice<Int>) async throws -> [Float] { next("prefill", Array(tokens)) }
    mutating func step(_ token: Int) async throws -> [Float] { next("step", [token]) }
}

func byteDecoder(_ table: [[UInt8]], counter: UnsafeMutablePointer<Int>? = nil) -> TextStreamer.Decode {
    { ids in
        counter?.pointee += ids.count
        return String(decoding: ids.flatMap { table[$0] }, as: UTF8.self)
    }
}

final class CoreTests: XCTestCase {
    func testSplitMix64KnownOutputs() {
        var rng = SplitMix64(seed: 0)
        XCTAssertEqual(rng.next(), 0xE220_A839_7B1D_CDAF)
        XCTAssertEqual(rng.next(), 0x6E78_9E6A_A1B9_65F4)
        var r2 = SplitMix64(seed: 0)
        let u = r2.nextUnit()
        XCTAssertEqual(u, Double(UInt64(0xE220_A839_7B1D_CDAF) >> 11) * 0x1p-53)
        XCTAssert(u >= 0 && u < 1)
    }

    func testSplitMix64MatchesPython() throws {
        let g = try Golden.load()
        XCTAssertGreaterThanOrEqual(g.rng.count, 3)
        for r in g.rng {
            var a = SplitMix64(seed: try XCTUnwrap(UInt64(r.seed)))
            XCTAssertEqual(r.outputs.map { UInt64($0) }, r.outputs.indices.map { _ in a.next() }, "seed \(r.seed)")
            var b = SplitMix64(seed: try XCTUnwrap(UInt64(r.seed)))
            XCTAssertEqual(r.units, r.units.indices.map { _ in b.nextUnit() }, "seed \(r.seed)")
        }
    }

    func run(_ c: Golden.Sampling) async throws -> GenerationResult {
        var model = ScriptedModel(rows: c.logits.map { $0.map { Float($0) } })
        let options = GenerationOptions(maxNewTokens: c.maxNewTokens, temperature: c.temperature, topK: c.topK,
                                        topP: c.topP, seed: try XCTUnwrap(UInt64(c.seed)))
        return try await Generation.run([0], model: &model, options: options, eosTokenIds: Set(c.eos))
    }

    /// Every golden case the filter keeps (at least ``atLeast`` of them) gives Python's tokens and stop reason.
    func assertMatchesPython(atLeast: Int, _ keep: (Golden.Sampling) -> Bool) async throws {
        let cases = try Golden.load().sampling.filter(keep)
        XCTAssertGreaterThanOrEqual(cases.count, atLeast)
        for c in cases {
            let r = try await run(c)
            XCTAssertEqual(r.tokens, c.tokens, c.name)
            XCTAssertEqual(r.stop.rawValue, c.stop, c.name)
        }
    }

    func testGreedyTokensMatchPython() async throws {
        try await assertMatchesPython(atLeast: 2) { $0.temperature == 0 }
    }

    func testSampledTokensMatchPython() async throws {
        try await assertMatchesPython(atLeast: 10) { $0.temperature > 0 }
    }

    func testEOSStopMatchesPython() async throws {
        let cases = try Golden.load().sampling.filter { $0.stop == "eos" }
        XCTAssertGreaterThanOrEqual(cases.count, 1)
        for c in cases {
            let r = try await run(c)
            XCTAssertEqual(r.stop, .eos, c.name)
            XCTAssertEqual(r.tokens.last.map { c.eos.contains($0) }, true, c.name)
            XCTAssertLessThan(r.tokens.count, c.maxNewTokens, c.name)
        }
    }

    func testGreedyIsTheFirstMaximumAndSkipsNaN() throws {
        var rng = SplitMix64(seed: 1)
        XCTAssertEqual(try Sampler.pick([0, 2, 1, 2, -1], SamplingOptions(), &rng), 1)
        XCTAssertEqual(try Sampler.pick([.nan, 1, 3, .nan, 3], SamplingOptions(), &rng), 2)
        XCTAssertEqual(rng.state, SplitMix64(seed: 1).state, "greedy draws nothing")
        XCTAssertThrowsError(try Sampler.pick([.nan, .infinity * 0], SamplingOptions(temperature: 1), &rng)) {
            XCTAssertEqual($0 as? SamplingError, .noFiniteLogit)
        }
        // top-k of 1 keeps every token tied with the first (as Python's)
        var seen = Set<Int>()
        for _ in 0..<64 { seen.insert(try Sampler.pick([0, 2, 1, 2, -1], SamplingOptions(temperature: 5, topK: 1), &rng)) }
        XCTAssertEqual(seen, [1, 3])
    }

    func testSamplingOptionsAreChecked() async throws {
        for bad in [SamplingOptions(temperature: -1), SamplingOptions(temperature: .infinity),
                    SamplingOptions(temperature: 1, topK: -2), SamplingOptions(temperature: 1, topP: 0),
                    SamplingOptions(temperature: 1, topP: 1.5)] {
            XCTAssertThrowsError(try bad.validate())
        }
        var model = ScriptedModel(rows: [[0, 1]])
        do {
            _ = try await Generation.run([], model: &model, options: GenerationOptions(), eosTokenIds: [])
            XCTFail("an empty prompt must throw")
        } catch {
            XCTAssertEqual(error as? GenerationError, .emptyPrompt)
        }
    }

    func testPrefillPlansMatchPython() throws {
        let plans = try Golden.load().plans
        XCTAssertGreaterThanOrEqual(plans.count, 100)
        for p in plans {
            let got = PrefillPlan(chunk: p.chunk).calls(p.length).map { ["\($0.start)", "\($0.stop)", $0.via.rawValue] }
            XCTAssertEqual(got, p.calls, "chunk \(p.chunk), length \(p.length)")
            let n = PrefillPlan(chunk: p.chunk).counts(p.length)
            XCTAssertEqual(n.prefill, p.length / p.chunk)
            XCTAssertEqual(n.steps, p.length % p.chunk)
        }
    }

    func testPromptIsFedByThePlanThenGenerationSteps() async throws {
        for (chunk, length) in [(4, 11), (4, 8), (3, 2), (0, 5), (1, 3)] {
            var model = ScriptedModel(rows: [[0, 0, 9]], prefillChunk: chunk)
            let prompt = Array(100..<(100 + length))
            let r = try await Generation.run(prompt, model: &model, options: GenerationOptions(maxNewTokens: 3),
                                             eosTokenIds: [])
            XCTAssertEqual(r, GenerationResult(tokens: [2, 2, 2], stop: .length))
            let plan = PrefillPlan(chunk: chunk).calls(length)
            XCTAssertEqual(model.calls.count, plan.count + 2)
            for (call, want) in zip(model.calls, plan) {
                XCTAssertEqual(call.via, want.via.rawValue)
                XCTAssertEqual(call.tokens, Array(prompt[want.start..<want.stop]))
            }
            XCTAssertEqual(model.calls.suffix(2).map { $0.tokens }, [[2], [2]])  // each picked token fed but the last
        }
    }

    func testStreamingMatchesPython() throws {
        let s = try Golden.load().stream
        var streamer = TextStreamer(decode: byteDecoder(s.table))
        let pieces = s.tokens.map { streamer.push($0) }
        XCTAssertEqual(pieces, s.pieces)
        XCTAssertEqual(streamer.flush(), s.flush)
        XCTAssertEqual(pieces.joined() + s.flush, s.text)
        XCTAssert(s.text.unicodeScalars.contains { $0.value > 0xFFFF }, "the sample holds a 4-byte character")
    }

    func testStreamingDecodesAWindowNotTheWholeSequence() throws {
        // 200 one-byte tokens then a 3-byte character split over three tokens: each push decodes a few tokens
        let table: [[UInt8]] = [Array("a".utf8), [0xE2], [0x82], [0xAC]]
        var decoded = 0
        var streamer = TextStreamer(decode: byteDecoder(table, counter: &decoded))
        var text = ""
        for _ in 0..<200 { text += streamer.push(0) }
        XCTAssertEqual(streamer.push(1), "")
        XCTAssertEqual(streamer.push(2), "")
        text += streamer.push(3)
        XCTAssertEqual(text, String(repeating: "a", count: 200) + "\u{20AC}")
        XCTAssertLessThanOrEqual(decoded, 203 * 8, "decoded \(decoded) tokens for 203 pushes")
        XCTAssertEqual(streamer.flush(), "")
        var held = TextStreamer(decode: byteDecoder(table))
        XCTAssertEqual(held.push(1), "")
        XCTAssertEqual(held.flush(), "\u{FFFD}")  // an incomplete sequence at the end comes out as U+FFFD
    }

    func testCancellationStopsBeforeTheNextCall() async throws {
        let task = Task { () -> (Int, Error?) in
            var model = ScriptedModel(rows: [[0, 1, 0]])
            model.cancelAfter = 4  // the 4th model call cancels the task that runs the loop
            do {
                _ = try await Generation.run([5], model: &model, options: GenerationOptions(maxNewTokens: 1000),
                                             eosTokenIds: [])
                return (model.calls.count, nil)
            } catch {
                return (model.calls.count, error)
            }
        }
        let (calls, error) = await task.value
        XCTAssert(error is CancellationError, "\(String(describing: error))")
        XCTAssertEqual(calls, 4)
    }

    func testStateFileWrittenByPythonReadsBitExact() throws {
        let g = try Golden.load().snapshot
        let file = try XCTUnwrap(FileManager.default.contents(atPath: g.path))
        let snap = try StateSnapshot(serialized: [UInt8](file))
        XCTAssertEqual(snap.entries.map { $0.name }, g.entries.map { $0.name })
        XCTAssertEqual(snap.entries.map { $0.shape }, g.entries.map { $0.shape })
        XCTAssertEqual(snap.entries.map { $0.bytes }, g.entries.map { bytes(hex: $0.hex) })
        XCTAssertEqual(snap.serialized(), [UInt8](file), "written back byte for byte")
    }

    func testStridedGatherAndScatterMatchPythonCOrder() throws {
        let g = try Golden.load().strided
        let buffer = bytes(hex: g.buffer), contiguous = bytes(hex: g.contiguous)
        let gathered = buffer.withUnsafeBytes {
            StateSnapshot.gather($0, shape: g.shape, strides: g.strides, elementSize: g.elementSize)
        }
        XCTAssertEqual(gathered, contiguous)
        var target = [UInt8](repeating: 0xAB, count: buffer.count)
        let ok = target.withUnsafeMutableBytes {
            StateSnapshot.scatter(contiguous, into: $0, shape: g.shape, strides: g.strides, elementSize: g.elementSize)
        }
        XCTAssertTrue(ok)
        let again = target.withUnsafeBytes {
            StateSnapshot.gather($0, shape: g.shape, strides: g.strides, elementSize: g.elementSize)
        }
        XCTAssertEqual(again, contiguous)
        XCTAssertEqual(target.filter { $0 == 0xAB }.count, buffer.count - contiguous.count, "padding untouched")
        var small = [UInt8](repeating: 0, count: 4)
        XCTAssertFalse(small.withUnsafeMutableBytes {
            StateSnapshot.scatter(contiguous, into: $0, shape: g.shape, strides: g.strides, elementSize: g.elementSize)
        })
    }

    func testStateSnapshotRoundTrip() throws {
        let snap = StateSnapshot(entries: [
            .init(name: "blocks_0_mlstm_c", shape: [1, 2, 4, 4], bytes: (0..<64).map { UInt8($0) }),
            .init(name: "blocks_0_mlstm_c_lo \u{1F600}", shape: [3], bytes: [1, 2, 3, 4, 5, 6]),
        ])
        let bytes = snap.serialized()
        XCTAssertEqual(Array(bytes.prefix(8)), Array("XLSTMST1".utf8))
        XCTAssertEqual(try StateSnapshot(serialized: bytes), snap)
        XCTAssertThrowsError(try StateSnapshot(serialized: Array(bytes.dropLast(3)))) {
            XCTAssertEqual($0 as? StateSnapshotError, .truncated)
        }
        XCTAssertThrowsError(try StateSnapshot(serialized: Array("NOTASNAP1234".utf8))) {
            XCTAssertEqual($0 as? StateSnapshotError, .notASnapshot)
        }
    }
}
