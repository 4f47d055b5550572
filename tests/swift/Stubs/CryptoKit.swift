// Type-checking stand-in for Apple's CryptoKit (tests/test_swift.py): SHA256.hash(data:), a sequence of bytes.
import Foundation

public struct SHA256Digest: Sequence {
    public func makeIterator() -> IndexingIterator<[UInt8]> { [UInt8]().makeIterator() }
}

public enum SHA256 {
    public static func hash<D: DataProtocol>(data: D) -> SHA256Digest { fatalError() }
}
