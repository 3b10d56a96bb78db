import XCTest
import Tensor

/// Asserts `|actual − expected| ≤ atol + rtol·|expected|`, forwarding the caller's location.
public func assertClose<T: BinaryFloatingPoint>(_ actual: T, _ expected: T, rtol: Double = 1e-5, atol: Double = 0,
                                                _ message: @autoclosure () -> String = "",
                                                file: StaticString = #filePath, line: UInt = #line) {
    let a = Double(actual), e = Double(expected)
    let tolerance = atol + rtol * Swift.abs(e)
    if !(Swift.abs(a - e) <= tolerance) {
        XCTFail("\(a) is not close to \(e) (|diff| \(Swift.abs(a - e)) > \(tolerance)) \(message())", file: file, line: line)
    }
}

/// Asserts that two sequences have the same count and are element-wise close.
public func assertClose<A: Collection, E: Collection>(_ actual: A, _ expected: E, rtol: Double = 1e-5, atol: Double = 0,
                                                      _ message: @autoclosure () -> String = "",
                                                      file: StaticString = #filePath, line: UInt = #line)
where A.Element: BinaryFloatingPoint, E.Element: BinaryFloatingPoint {
    guard actual.count == expected.count else {
        XCTFail("counts differ: \(actual.count) vs \(expected.count) \(message())", file: file, line: line)
        return
    }
    var worst: (index: Int, actual: Double, expected: Double)?
    var failures = 0
    for (i, (a, e)) in zip(actual, expected).enumerated() {
        let a = Double(a), e = Double(e)
        if !(Swift.abs(a - e) <= atol + rtol * Swift.abs(e)) {
            failures += 1
            if worst == nil || Swift.abs(a - e) > Swift.abs(worst!.actual - worst!.expected) { worst = (i, a, e) }
        }
    }
    if let worst {
        XCTFail("\(failures) of \(actual.count) elements differ; worst at \(worst.index): \(worst.actual) vs \(worst.expected) \(message())",
                file: file, line: line)
    }
}

/// The relative norm error `‖actual − expected‖ / ‖expected‖` (the golden files' gradient metric).
public func relativeNormError<A: Collection, E: Collection>(_ actual: A, _ expected: E) -> Double
where A.Element: BinaryFloatingPoint, E.Element: BinaryFloatingPoint {
    precondition(actual.count == expected.count, "relative error of \(actual.count) vs \(expected.count) elements")
    var difference = 0.0, reference = 0.0
    for (a, e) in zip(actual, expected) {
        let d = Double(a) - Double(e)
        difference += d * d
        reference += Double(e) * Double(e)
    }
    return reference == 0 ? difference.squareRoot() : (difference / reference).squareRoot()
}

/// Asserts a relative norm error at most `tolerance`.
public func assertRelativeNormError<A: Collection, E: Collection>(_ actual: A, _ expected: E, below tolerance: Double,
                                                                  _ message: @autoclosure () -> String = "",
                                                                  file: StaticString = #filePath, line: UInt = #line)
where A.Element: BinaryFloatingPoint, E.Element: BinaryFloatingPoint {
    guard actual.count == expected.count else {
        XCTFail("counts differ: \(actual.count) vs \(expected.count) \(message())", file: file, line: line)
        return
    }
    let error = relativeNormError(actual, expected)
    XCTAssertLessThanOrEqual(error, tolerance, "relative norm error \(error) \(message())", file: file, line: line)
}

/// Test data: a tensor of standard-normal draws from a fixed stream.
public func randomTensor<Scalar: TensorScalar>(_ shape: [Int], seed: UInt64 = 1, stream: UInt64 = 0,
                                               as _: Scalar.Type = Scalar.self) -> Tensor<Scalar> {
    let t = Tensor<Scalar>(zeros: shape)
    CounterRandom(seed: seed, stream: stream).fillNormal(t)
    return t
}
