import XCTest
final class CommandLineTestsPlaceholder: XCTestCase { func testBuilds() {} }
