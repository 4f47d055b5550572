// A saved context: the bytes of every state buffer of a model, by name, to restore a conversation later.
// `serialized()` / `init(serialized:)` read and write one flat little-endian format:
//
//   "XLSTMST1"                           8 bytes
//   count                                u32
//   per state: name length u32, name (UTF-8), rank u32, dims u64 x rank, byte count u64, bytes
//
// Bytes are the buffer's elements in C order (row-major, contiguous, little-endian), whatever strides the
// runtime's buffer has: `StateSnapshot.gather` / `scatter` copy between a strided buffer and that order.
// Python writes and reads the same format (xlstm_export/swift/snapshot.py). The Core ML adapter fills it from
// an MLState (`withMultiArray(for:)`) and writes it back the same way.

public enum StateSnapshotError: Error, Equatable {
    case notASnapshot
    case truncated
}

public struct StateSnapshot: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var name: String
        public var shape: [Int]
        public var bytes: [UInt8]

        public init(name: String, shape: [Int], bytes: [UInt8]) {
            self.name = name
            self.shape = shape
            self.bytes = bytes
        }
    }

    public static let magic: [UInt8] = Array("XLSTMST1".utf8)
    public var entries: [Entry]

    public init(entries: [Entry]) { self.entries = entries }

    public func entry(named name: String) -> Entry? { entries.first { $0.name == name } }

    /// The elements of a strided buffer (`strides` in elements) in C order, `elementSize` bytes each.
    public static func gather(_ raw: UnsafeRawBufferPointer, shape: [Int], strides: [Int], elementSize: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(shape.reduce(1, *) * elementSize)
        forEachOffset(shape: shape, strides: strides) { offset in
            out.append(contentsOf: raw[(offset * elementSize)..<((offset + 1) * elementSize)])
        }
        return out
    }

    /// Writes C-ordered `bytes` into a strided buffer (the inverse of `gather`); false when the sizes differ.
    @discardableResult
    public static func scatter(_ bytes: [UInt8], into raw: UnsafeMutableRawBufferPointer, shape: [Int], strides: [Int],
                               elementSize: Int) -> Bool {
        guard bytes.count == shape.reduce(1, *) * elementSize else { return false }
        var at = 0
        var fits = true
        forEachOffset(shape: shape, strides: strides) { offset in
            let start = offset * elementSize
            guard start >= 0, start + elementSize <= raw.count else {
                fits = false
                return
            }
            for b in 0..<elementSize { raw[start + b] = bytes[at + b] }
            at += elementSize
        }
        return fits
    }

    /// Calls `body` with the element offset of every index in C order.
    static func forEachOffset(shape: [Int], strides: [Int], _ body: (Int) -> Void) {
        guard shape.count == strides.count, !shape.contains(where: { $0 <= 0 }) else { return }
        var index = [Int](repeating: 0, count: shape.count)
        while true {
            var offset = 0
            for d in 0..<shape.count { offset += index[d] * strides[d] }
            body(offset)
            var d = shape.count - 1
            while d >= 0 {
                index[d] += 1
                if index[d] < shape[d] { break }
                index[d] = 0
                d -= 1
            }
            if d < 0 { return }
        }
    }

    public func serialized() -> [UInt8] {
        var out = Self.magic
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        put(UInt32(entries.count))
        for e in entries {
            let name = Array(e.name.utf8)
            put(UInt32(name.count))
            out.append(contentsOf: name)
            put(UInt32(e.shape.count))
            for d in e.shape { put(UInt64(d)) }
            put(UInt64(e.bytes.count))
            out.append(contentsOf: e.bytes)
        }
        return out
    }

    public init(serialized data: [UInt8]) throws {
        guard data.count >= 12, Array(data[0..<8]) == Self.magic else { throw StateSnapshotError.notASnapshot }
        var at = 8
        func take(_ n: Int) throws -> ArraySlice<UInt8> {
            guard n >= 0, at + n <= data.count else { throw StateSnapshotError.truncated }
            defer { at += n }
            return data[at..<at + n]
        }
        func get<T: FixedWidthInteger>(_: T.Type) throws -> T {
            var v: T = 0
            for (i, b) in try take(MemoryLayout<T>.size).enumerated() { v |= T(b) << (8 * i) }
            return v
        }
        var entries: [Entry] = []
        for _ in 0..<(try get(UInt32.self)) {
            let name = String(decoding: try take(Int(try get(UInt32.self))), as: UTF8.self)
            var shape: [Int] = []
            for _ in 0..<(try get(UInt32.self)) {
                let d = try get(UInt64.self)
                guard d <= UInt64(Int.max) else { throw StateSnapshotError.truncated }
                shape.append(Int(d))
            }
            let n = try get(UInt64.self)
            guard n <= UInt64(data.count) else { throw StateSnapshotError.truncated }
            entries.append(Entry(name: name, shape: shape, bytes: Array(try take(Int(n)))))
        }
        guard at == data.count else { throw StateSnapshotError.notASnapshot }
        self.entries = entries
    }
}
