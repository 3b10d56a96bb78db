import XCTest
import Tensor
import _TestSupport

/// BLAS products against a naive Double reference on awkward shapes.
final class MatrixProductTests: XCTestCase {
    /// (m, k, n) of `op(a)·op(b)`.
    static let shapes = [(1, 1, 1), (3, 5, 7), (7, 1, 3), (513, 257, 129)]

    func naiveProduct(_ a: [Double], _ rowsA: Int, _ colsA: Int, transposeA: Bool,
                      _ b: [Double], _ rowsB: Int, _ colsB: Int, transposeB: Bool) -> [Double] {
        let m = transposeA ? colsA : rowsA, k = transposeA ? rowsA : colsA
        let n = transposeB ? rowsB : colsB
        var c = [Double](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for l in 0..<k {
                    let x = transposeA ? a[l * colsA + i] : a[i * colsA + l]
                    let y = transposeB ? b[j * colsB + l] : b[l * colsB + j]
                    s += x * y
                }
                c[i * n + j] = s
            }
        }
        return c
    }

    func checkGemm<Scalar: TensorScalar>(_: Scalar.Type, rtol: Double) {
        for (m, k, n) in Self.shapes {
            for transposeA in [false, true] {
                for transposeB in [false, true] {
                    let a: Tensor<Scalar> = randomTensor(transposeA ? [k, m] : [m, k], seed: 1)
                    let b: Tensor<Scalar> = randomTensor(transposeB ? [n, k] : [k, n], seed: 2)
                    let c: Tensor<Scalar> = randomTensor([m, n], seed: 3)
                    let c0 = c.scalars.map(Double.init)
                    Tensor.gemm(a, transposeA: transposeA, b, transposeB: transposeB, into: c, alpha: 2, beta: 0.5)
                    let product = naiveProduct(a.scalars.map(Double.init), a.shape[0], a.shape[1], transposeA: transposeA,
                                               b.scalars.map(Double.init), b.shape[0], b.shape[1], transposeB: transposeB)
                    let expected = zip(product, c0).map { 2 * $0 + 0.5 * $1 }
                    // Tolerance relative to the size of the sum: sqrt(k) terms of unit size.
                    assertClose(c.scalars, expected, rtol: rtol, atol: rtol * Double(k).squareRoot(),
                                "\(Scalar.self) m=\(m) k=\(k) n=\(n) tA=\(transposeA) tB=\(transposeB)")
                }
            }
        }
    }

    func testGemmFloat() { checkGemm(Float.self, rtol: 1e-5) }
    func testGemmDouble() { checkGemm(Double.self, rtol: 1e-12) }

    func checkSyrk<Scalar: TensorScalar>(_: Scalar.Type, rtol: Double) {
        for (m, k, _) in Self.shapes {
            for transpose in [true, false] {
                // transpose: aᵀa of a k×m matrix; otherwise a aᵀ of an m×k matrix.
                let a: Tensor<Scalar> = randomTensor(transpose ? [k, m] : [m, k], seed: 4)
                let c: Tensor<Scalar> = randomTensor([m, m], seed: 5)
                let c0 = c.scalars.map(Double.init)
                Tensor.syrk(a, transpose: transpose, into: c, alpha: 0.5, beta: 2)
                let ad = a.scalars.map(Double.init)
                let product = naiveProduct(ad, a.shape[0], a.shape[1], transposeA: transpose,
                                           ad, a.shape[0], a.shape[1], transposeB: !transpose)
                // syrk reads the lower triangle of the old c and mirrors it.
                var expected = [Double](repeating: 0, count: m * m)
                for i in 0..<m {
                    for j in 0..<m {
                        expected[i * m + j] = 0.5 * product[i * m + j] + 2 * c0[max(i, j) * m + min(i, j)]
                    }
                }
                assertClose(c.scalars, expected, rtol: rtol, atol: rtol * Double(k).squareRoot(),
                            "\(Scalar.self) syrk n=\(m) k=\(k) transpose=\(transpose)")
            }
        }
    }

    /// The Gram matrix of a range of columns is the product of those columns alone, and the
    /// ranges of a partition add up to the whole (what VICReg's ranks reduce).
    func testSyrkOfColumnRangesAddsUpToTheWhole() {
        let a: Tensor<Double> = randomTensor([6, 10], seed: 8)
        let whole = Tensor<Double>(zeros: [6, 6])
        Tensor.syrk(a, transpose: false, into: whole)
        var sum = [Double](repeating: 0, count: 36)
        for columns in [0 ..< 3, 3 ..< 3, 3 ..< 7, 7 ..< 10] {
            let part = Tensor<Double>(zeros: [6, 6])
            Tensor.syrk(a, transpose: false, columns: columns, into: part)
            let ad = a.scalars
            for i in 0 ..< 6 {
                for j in 0 ..< 6 {
                    let expected = columns.reduce(0.0) { $0 + ad[i * 10 + $1] * ad[j * 10 + $1] }
                    XCTAssertEqual(part[i, j], expected, accuracy: 1e-12, "columns \(columns) (\(i), \(j))")
                }
            }
            for (k, value) in part.scalars.enumerated() { sum[k] += value }
        }
        assertClose(sum, whole.scalars, rtol: 1e-12, atol: 1e-12, "the parts against the whole")
    }

    func testSyrkFloat() { checkSyrk(Float.self, rtol: 1e-5) }
    func testSyrkDouble() { checkSyrk(Double.self, rtol: 1e-12) }

    func testMatmulAllocates() {
        let a = Tensor<Double>(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        let b = Tensor<Double>(shape: [3, 1], scalars: [1, 0, -1])
        XCTAssertEqual(Tensor.matmul(a, b).scalars, [-2, -2])
        XCTAssertEqual(Tensor.matmul(a, transposeA: true, a).shape, [3, 3])
    }

    func testCholeskyAndInverse() throws {
        let n = 6
        let x: Tensor<Double> = randomTensor([20, n], seed: 7)
        let gram = Tensor<Double>(zeros: [n, n])
        Tensor.syrk(x, into: gram)
        let l = try gram.choleskyLower()
        assertClose(Tensor.matmul(l, l, transposeB: true).scalars, gram.scalars, rtol: 1e-12, atol: 1e-12)
        let inverse = try gram.choleskyLower(inverse: true)
        let identity = Tensor.matmul(inverse, l)
        for i in 0..<n { for j in 0..<n { assertClose(identity[i, j], i == j ? 1 : 0, atol: 1e-12) } }
        XCTAssertEqual(inverse[0, n - 1], 0)
        let singular = Tensor<Double>(shape: [2, 2], scalars: [1, 1, 1, 1])
        XCTAssertThrowsError(try singular.choleskyLower()) { error in
            XCTAssertTrue("\(error)".contains("not positive definite"), "\(error)")
        }
    }

    func testSymmetricEigenvalues() throws {
        let a = Tensor<Float>(shape: [3, 3], scalars: [2, 0, 0, 0, 3, 4, 0, 4, 9])
        assertClose(try a.symmetricEigenvalues(), [1, 2, 11] as [Double], rtol: 1e-5)
    }
}
