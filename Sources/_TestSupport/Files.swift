// Test helpers for files on disk and for errors: a fresh temporary directory per test and an
// assertion that an expression throws an error whose text says what the user needs to know.
import Foundation
import XCTest

/// Creates a new, empty directory under the system temporary directory and, when given a
/// test case, removes it when that test finishes.
/// - Parameters:
///   - testCase: The test whose teardown removes the directory; nil leaves it in place.
///   - prefix: The start of the directory's name, to tell whose it is (default `"anticollapse"`).
/// - Returns: The directory's URL.
public func temporaryDirectory(for testCase: XCTestCase? = nil, prefix: String = "anticollapse") throws -> URL {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("\(prefix)-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    testCase?.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
    return url
}

/// Asserts that `expression` throws, and that the error's description contains every one of
/// `fragments`.
/// - Parameters:
///   - expression: The code expected to fail.
///   - fragments: Text the error message must contain, e.g. the file path and the reason.
///   - file: The file to report failures in (defaults to the caller's).
///   - line: The line to report failures at (defaults to the caller's).
/// - Returns: The error thrown, for further checks, or nil if none was.
@discardableResult
public func assertThrowsError<T>(_ expression: @autoclosure () throws -> T, containing fragments: String...,
                                 file: StaticString = #filePath, line: UInt = #line) -> Error? {
    do {
        _ = try expression()
        XCTFail("expected an error containing \(fragments), but nothing was thrown", file: file, line: line)
        return nil
    } catch {
        let message = String(describing: error)
        for fragment in fragments where !message.contains(fragment) {
            XCTFail("error \"\(message)\" does not contain \"\(fragment)\"", file: file, line: line)
        }
        return error
    }
}

/// Runs `executable` with `arguments` to its end; its status and its standard output and error
/// together.
public func runProcess(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}
