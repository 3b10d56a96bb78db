import XCTest
final class ObjectivesTestsPlaceholder: XCTestCase { func testBuilds() {} }
