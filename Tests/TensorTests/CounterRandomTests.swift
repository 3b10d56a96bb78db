import Foundation
import XCTest
import Tensor
import _TestSupport

final class CounterRandomTests: XCTestCase {
    /// Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
    func testPhiloxKnownAnswers() {
        XCTAssertEqual(CounterRandom.philox(counter: SIMD4(0, 0, 0, 0), key: SIMD2(0, 0)),
                       SIMD4(0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8))
        XCTAssertEqual(CounterRandom.philox(counter: SIMD4(repeating: 0xffff_ffff), key: SIMD2(repeating: 0xffff_ffff)),
                       SIMD4(0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd))
        XCTAssertEqual(CounterRandom.philox(counter: SIMD4(0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344),
                                            key: SIMD2(0xa409_3822, 0x299f_31d0)),
                       SIMD4(0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1))
    }

    func testDrawsArePureFunctionsOfPosition() {
        let g = CounterRandom(seed: 42, stream: 7)
        let whole = Tensor<Double>(zeros: [100])
        g.fillNormal(whole)
        // The same elements drawn in two pieces, in the other order, on another "rank".
        let tail = Tensor<Double>(zeros: [60]), head = Tensor<Double>(zeros: [40])
        g.fillNormal(tail, start: 40)
        g.fillNormal(head)
        XCTAssertEqual(head.scalars + tail.scalars, whole.scalars)
        // Float draws are the Double draws rounded.
        let asFloat = Tensor<Float>(zeros: [100])
        g.fillNormal(asFloat)
        XCTAssertEqual(asFloat.scalars, whole.scalars.map { Float($0) })
        // Other streams and seeds differ.
        XCTAssertNotEqual(CounterRandom(seed: 42, stream: 8).normal(at: 0), g.normal(at: 0))
        XCTAssertNotEqual(CounterRandom(seed: 43, stream: 7).normal(at: 0), g.normal(at: 0))
        XCTAssertNotEqual(g.substream(1).normal(at: 0), g.substream(2).normal(at: 0))
        XCTAssertEqual(CounterRandom(seed: 1, streamName: "encoder.0.weight"), CounterRandom(seed: 1, streamName: "encoder.0.weight"))
    }

    func testMomentsOfDistributions() {
        let n = 200_000
        let g = CounterRandom(seed: 3)
        var sum = 0.0, sumSquares = 0.0, minimum = 1.0, maximum = 0.0
        for i in 0..<n {
            let u = g.uniform(at: UInt64(i))
            sum += u; sumSquares += u * u
            minimum = min(minimum, u); maximum = max(maximum, u)
        }
        assertClose(sum / Double(n), 0.5, atol: 0.005)
        assertClose(sumSquares / Double(n) - 0.25, 1.0 / 12, atol: 0.002)
        XCTAssertGreaterThanOrEqual(minimum, 0); XCTAssertLessThan(maximum, 1)
        sum = 0; sumSquares = 0
        var cube = 0.0
        for i in 0..<n {
            let z = g.normal(at: UInt64(i))
            sum += z; sumSquares += z * z; cube += z * z * z
        }
        assertClose(sum / Double(n), 0, atol: 0.01)
        assertClose(sumSquares / Double(n), 1, atol: 0.01)
        assertClose(cube / Double(n), 0, atol: 0.03)
    }

    /// The single-precision normals: pure functions of position (pieces starting at odd and
    /// even offsets agree with the whole), standard normal moments, and no pair repeated across
    /// the two halves of a block.
    func testSinglePrecisionNormals() {
        let g = CounterRandom(seed: 5, stream: 9)
        let n = 200_000
        var whole = [Float](repeating: 0, count: n)
        whole.withUnsafeMutableBufferPointer { g.singlePrecisionNormals(start: 0, into: $0) }
        for start in [1, 2, 3, 4, 7] {
            var piece = [Float](repeating: 0, count: 11)
            piece.withUnsafeMutableBufferPointer { g.singlePrecisionNormals(start: UInt64(start), into: $0) }
            XCTAssertEqual(piece, Array(whole[start..<(start + 11)]), "start \(start)")
        }
        XCTAssertNotEqual(whole[0], whole[2])
        let values = whole.map(Double.init)
        let mean = values.reduce(0, +) / Double(n)
        let variance = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n)
        let skew = values.reduce(0) { $0 + pow($1 - mean, 3) } / Double(n)
        let kurtosis = values.reduce(0) { $0 + pow($1 - mean, 4) } / Double(n)
        assertClose(mean, 0, atol: 0.01)
        assertClose(variance, 1, atol: 0.01)
        assertClose(skew, 0, atol: 0.03)
        assertClose(kurtosis, 3, atol: 0.06)
        XCTAssertTrue(whole.allSatisfy(\.isFinite))
    }

    func testSequenceShufflesReproducibly() {
        var a = CounterRandom(seed: 9, stream: 1).sequence()
        var b = CounterRandom(seed: 9, stream: 1).sequence()
        XCTAssertEqual(Array(0..<50).shuffled(using: &a), Array(0..<50).shuffled(using: &b))
        XCTAssertEqual(a.counter, b.counter)
    }
}
