/// Matrix products through BLAS on tensors viewed as row-major matrices.
///
/// A tensor of shape `[n, d1, d2, …]` is the `n × (d1·d2·…)` matrix here.
extension Tensor {
    /// `c = alpha · op(a) · op(b) + beta · c`, where `op` transposes when asked (BLAS `gemm`).
    ///
    /// - Parameters:
    ///   - a: an `m × k` matrix, or `k × m` with `transposeA`.
    ///   - b: a `k × n` matrix, or `n × k` with `transposeB`.
    ///   - c: the `m × n` result; must not overlap `a` or `b`.
    ///   - alpha: scales the product (default 1).
    ///   - beta: scales what `c` held (default 0: overwrite).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public static func gemm(_ a: Tensor, transposeA: Bool = false, _ b: Tensor, transposeB: Bool = false,
                            into c: Tensor, alpha: Scalar = 1, beta: Scalar = 0) {
        let (m, k) = transposeA ? (a.columnCount, a.rowCount) : (a.rowCount, a.columnCount)
        let (kb, n) = transposeB ? (b.columnCount, b.rowCount) : (b.rowCount, b.columnCount)
        precondition(k == kb, "gemm: inner dimensions differ, \(a.shape)\(transposeA ? "ᵀ" : "") · \(b.shape)\(transposeB ? "ᵀ" : "")")
        precondition(c.rowCount == m && c.columnCount == n, "gemm: result \(c.shape), expected [\(m), \(n)]")
        guard m > 0, n > 0 else { return }
        if k == 0 {
            c.withUnsafeMutableBufferPointer { out in for i in out.indices { out[i] *= beta } }
            if beta == 0 { c.fill(0) }
            return
        }
        a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                c.withUnsafeMutableBufferPointer { pc in
                    Scalar.gemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k,
                                alpha: alpha, a: pa.baseAddress!, lda: a.columnCount,
                                b: pb.baseAddress!, ldb: b.columnCount,
                                beta: beta, c: pc.baseAddress!, ldc: n)
                }
            }
        }
    }

    /// The product `op(a) · op(b)` in a new tensor.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public static func matmul(_ a: Tensor, transposeA: Bool = false, _ b: Tensor, transposeB: Bool = false) -> Tensor {
        let m = transposeA ? a.columnCount : a.rowCount
        let n = transposeB ? b.rowCount : b.columnCount
        let c = Tensor(zeros: [m, n])
        gemm(a, transposeA: transposeA, b, transposeB: transposeB, into: c)
        return c
    }

    /// A Gram matrix through BLAS `syrk` (half the work of `gemm`):
    /// `c = alpha · aᵀa + beta · c` (`transpose`, the default: `a` is `k × n`, `c` is `n × n`,
    /// a covariance of columns) or `c = alpha · a aᵀ + beta · c` (`a` is `n × k`).
    ///
    /// - Parameters:
    ///   - columns: without `transpose`, the Gram matrix of these columns of `a` only (a rank's
    ///     share of the features, say: the shares' results add up to the whole); nil for all.
    ///   - fillUpper: mirror the computed lower triangle into the upper one (default true). With
    ///     false the upper triangle of `c` keeps what it held, scaled by nothing.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public static func syrk(_ a: Tensor, transpose: Bool = true, columns: Range<Int>? = nil, into c: Tensor,
                            alpha: Scalar = 1, beta: Scalar = 0, fillUpper: Bool = true) {
        precondition(columns == nil || !transpose, "syrk: a column range needs transpose: false")
        let columns = columns ?? 0 ..< a.columnCount
        precondition(columns.clamped(to: 0 ..< a.columnCount) == columns, "syrk: columns \(columns) of \(a.shape)")
        let (n, k) = transpose ? (a.columnCount, a.rowCount) : (a.rowCount, columns.count)
        precondition(c.rowCount == n && c.columnCount == n, "syrk: result \(c.shape), expected [\(n), \(n)]")
        guard n > 0 else { return }
        a.withUnsafeBufferPointer { pa in
            c.withUnsafeMutableBufferPointer { pc in
                if k == 0 {
                    for i in 0..<n { for j in 0...i { pc[i * n + j] = beta == 0 ? 0 : beta * pc[i * n + j] } }
                } else {
                    Scalar.syrkLower(transpose: transpose, n: n, k: k, alpha: alpha, a: pa.baseAddress! + columns.lowerBound,
                                     lda: a.columnCount, beta: beta, c: pc.baseAddress!, ldc: n)
                }
                if fillUpper {
                    for i in 0..<n { for j in (i + 1)..<n { pc[i * n + j] = pc[j * n + i] } }
                }
            }
        }
    }
}

/// A factorisation that LAPACK could not complete.
public struct LinearAlgebraError: Error, CustomStringConvertible {
    /// The LAPACK routine.
    public let routine: String
    /// LAPACK's `info`.
    public let info: Int
    public var description: String {
        switch routine {
        case "potrf" where info > 0:
            return "Cholesky factorisation failed: the matrix is not positive definite (leading minor \(info))"
        default:
            return "LAPACK \(routine) failed with info \(info)"
        }
    }
}

extension Tensor {
    /// The lower Cholesky factor `L` of a symmetric positive-definite matrix (`self = L Lᵀ`),
    /// or its inverse `L⁻¹` with `inverse`; the upper triangle of the result is zero.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func choleskyLower(inverse: Bool = false) throws -> Tensor {
        try choleskyLower(inverse: inverse, into: Tensor(zeros: shape))
    }

    /// ``choleskyLower(inverse:)`` written into `result` (shaped like this matrix), which is returned.
    @discardableResult
    public func choleskyLower(inverse: Bool = false, into result: Tensor) throws -> Tensor {
        precondition(rank == 2 && shape[0] == shape[1], "Cholesky of a non-square \(shape)")
        precondition(result.shape == shape, "Cholesky of \(shape) into \(result.shape)")
        let n = shape[0]
        result.copy(from: self)
        let info = result.withUnsafeMutableBufferPointer { p in
            Scalar.choleskyLower(n: n, a: p.baseAddress!, lda: n, invert: inverse)
        }
        guard info == 0 else { throw LinearAlgebraError(routine: info > 0 ? "potrf" : "trtri", info: info) }
        result.withUnsafeMutableBufferPointer { p in
            for i in 0..<n { for j in (i + 1)..<n { p[i * n + j] = 0 } }
        }
        return result
    }

    /// The eigenvalues of a symmetric matrix, in ascending order.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func symmetricEigenvalues() throws -> [Scalar] {
        precondition(rank == 2 && shape[0] == shape[1], "eigenvalues of a non-square \(shape)")
        let n = shape[0]
        let work = copy()
        var values = [Scalar](repeating: 0, count: n)
        let info = work.withUnsafeMutableBufferPointer { p in
            values.withUnsafeMutableBufferPointer { w in
                Scalar.symmetricEigenvalues(n: n, a: p.baseAddress!, lda: n, into: w.baseAddress!)
            }
        }
        guard info == 0 else { throw LinearAlgebraError(routine: "syevd", info: info) }
        return values
    }
}
