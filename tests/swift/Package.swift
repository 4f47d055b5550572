// swift-tools-version: 6.0
// The Swift core's tests (tests/test_swift.py runs them): XLSTMCore is xlstm_export/swift/Core (here a link;
// the pytest copies the Core/ folder of an emitted package in its place), checked against golden vectors
// Python writes (the file named by XLSTM_SWIFT_GOLDEN).
import PackageDescription

let package = Package(
    name: "XLSTMCoreTests",
    targets: [
        .target(name: "XLSTMCore", path: "Sources/XLSTMCore"),
        .testTarget(name: "XLSTMCoreTests", dependencies: ["XLSTMCore"], path: "Tests/XLSTMCoreTests"),
    ]
)
