import XCTest
final class CommunicationTestsPlaceholder: XCTestCase { func testBuilds() {} }
