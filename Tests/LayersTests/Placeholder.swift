import XCTest
final class LayersTestsPlaceholder: XCTestCase { func testBuilds() {} }
