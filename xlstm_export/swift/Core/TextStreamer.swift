// Incremental text streaming: `push(token)` returns the text the token adds, decoding only the tokens since
// the last piece shown (a window), never the whole sequence again. A piece that ends in U+FFFD (an incomplete
// UTF-8 sequence of byte-level tokens) is held back until a later token completes it, as Python's
// xlstm_export/text/tokenizer.py `TextStream` does; the new text is what decoding the window adds to the
// decoding of the window's already shown tokens (so a tokenizer's handling of a sequence's first token, e.g.
// a leading space, cancels out). Compared by Unicode scalars, as Python compares code points.

public struct TextStreamer {
    public typealias Decode = ([Int]) -> String

    private let decode: Decode
    private var tokens: [Int] = []
    private var prefixOffset = 0  // the window's first token
    private var readOffset = 0  // tokens before this one are shown

    public init(decode: @escaping Decode) { self.decode = decode }

    /// Every token pushed so far.
    public var allTokens: [Int] { tokens }

    /// The text `token` adds ("" while it is held back).
    public mutating func push(_ token: Int) -> String {
        tokens.append(token)
        let shown = Array(decode(Array(tokens[prefixOffset..<readOffset])).unicodeScalars)
        let text = Array(decode(Array(tokens[prefixOffset...])).unicodeScalars)
        guard text.count > shown.count, text.last != "\u{FFFD}", text.starts(with: shown) else { return "" }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: text[shown.count...])
        prefixOffset = readOffset
        readOffset = tokens.count
        return String(out)
    }

    /// What is still held back (an incomplete sequence at the end, shown as U+FFFD by the decoder).
    public mutating func flush() -> String {
        let shown = Array(decode(Array(tokens[prefixOffset..<readOffset])).unicodeScalars)
        let text = Array(decode(Array(tokens[prefixOffset...])).unicodeScalars)
        prefixOffset = readOffset
        readOffset = tokens.count
        guard text.count > shown.count, text.starts(with: shown) else { return "" }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: text[shown.count...])
        return String(out)
    }
}
