// Type-checking stand-in for swift-transformers' Tokenizers (tests/test_swift.py): the declarations the
// generated adapter uses, with swift-transformers' signatures. Nothing here runs.
import Foundation

public protocol Tokenizer {
    func encode(text: String) -> [Int]
    func decode(tokens: [Int]) -> String
}

public struct AutoTokenizer {
    public static func from(modelFolder: URL) async throws -> any Tokenizer { fatalError() }
}
