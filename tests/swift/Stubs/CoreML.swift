// Type-checking stand-in for Apple's Core ML on Linux (tests/test_swift.py): only the declarations the
// generated adapter uses, with the signatures of Apple's documentation (iOS 18 / macOS 15 SDK). Nothing here
// runs; it lets `swiftc -typecheck` check the adapter's calls, types and closures.
import Foundation

public enum MLComputeUnits: Int, Sendable { case cpuOnly, cpuAndGPU, all, cpuAndNeuralEngine }
public enum MLMultiArrayDataType: Int, Sendable { case double, float64, float32, float16, float, int32 }

public protocol MLShapedArrayScalar {}
extension Float: MLShapedArrayScalar {}
extension Double: MLShapedArrayScalar {}
extension Int32: MLShapedArrayScalar {}

open class MLMultiArray: NSObject {
    open var dataType: MLMultiArrayDataType { .float32 }
    open var shape: [NSNumber] { [] }
    open var strides: [NSNumber] { [] }
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R { fatalError() }
    public func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer, [Int]) throws -> R) rethrows -> R {
        fatalError()
    }
}

public struct MLShapedArray<Scalar: MLShapedArrayScalar> {
    public init(_ multiArray: MLMultiArray) { fatalError() }
    public init(converting multiArray: MLMultiArray) { fatalError() }
    public init<S: Sequence>(scalars: S, shape: [Int]) where S.Element == Scalar { fatalError() }
    public func withUnsafeShapedBufferPointer<R>(_ body: (UnsafeBufferPointer<Scalar>, [Int], [Int]) throws -> R)
        rethrows -> R { fatalError() }
}

open class MLFeatureValue: NSObject {
    public convenience init<Scalar: MLShapedArrayScalar>(shapedArray: MLShapedArray<Scalar>) { fatalError() }
    open var multiArrayValue: MLMultiArray? { nil }
}

public protocol MLFeatureProvider {
    var featureNames: Set<String> { get }
    func featureValue(for featureName: String) -> MLFeatureValue?
}

open class MLDictionaryFeatureProvider: NSObject, MLFeatureProvider {
    public init(dictionary: [String: Any]) throws { fatalError() }
    open var featureNames: Set<String> { [] }
    open func featureValue(for featureName: String) -> MLFeatureValue? { nil }
}

open class MLModelConfiguration: NSObject {
    open var computeUnits: MLComputeUnits = .all
    open var functionName: String? = nil
}

open class MLState: NSObject {
    public func withMultiArray<R>(for stateName: String, _ body: (MLMultiArray) throws -> R) rethrows -> R {
        fatalError()
    }
}

open class MLModel: NSObject {
    public class func load(contentsOf url: URL, configuration: MLModelConfiguration = MLModelConfiguration())
        async throws -> MLModel { fatalError() }
    public class func compileModel(at modelURL: URL) async throws -> URL { fatalError() }
    open func makeState() -> MLState { fatalError() }
    public func prediction(from input: MLFeatureProvider, using state: MLState) async throws -> MLFeatureProvider {
        fatalError()
    }
}
