import COpenBLAS
import RealModule

/// A floating-point type the tensor kernels work in: `Float` for training, `Double` for
/// finite-difference checks.
///
/// The matrix products and factorisations are requirements, so that generic code dispatches
/// to the BLAS or LAPACK routine of the concrete type (`sgemm` or `dgemm`, …). All matrices
/// are row-major; leading dimensions count elements.
public protocol TensorScalar: BinaryFloatingPoint, Real, Sendable, CustomStringConvertible
where RawSignificand: FixedWidthInteger {
    /// `c = alpha * op(a) * op(b) + beta * c` with `op(a)` of shape `m × k`, `op(b)` of `k × n`.
    static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
                     alpha: Self, a: UnsafePointer<Self>, lda: Int,
                     b: UnsafePointer<Self>, ldb: Int,
                     beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int)

    /// `c = alpha * op(a) * op(a)ᵀ + beta * c`, writing the lower triangle of the `n × n` matrix
    /// `c` only. With `transpose`, `op(a) = aᵀ` and `a` is `k × n` (a Gram matrix of columns).
    static func syrkLower(transpose: Bool, n: Int, k: Int, alpha: Self, a: UnsafePointer<Self>, lda: Int,
                          beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int)

    /// LAPACK `?potrf` + `?trtri` on a row-major symmetric positive-definite `n × n` matrix:
    /// overwrites the lower triangle with `L` (`a = L Lᵀ`) or, with `invert`, with `L⁻¹`.
    /// Returns LAPACK's `info` (0 on success).
    static func choleskyLower(n: Int, a: UnsafeMutablePointer<Self>, lda: Int, invert: Bool) -> Int

    /// LAPACK `?syevd`: the eigenvalues (ascending) of a symmetric `n × n` matrix, destroying `a`.
    /// Returns LAPACK's `info`.
    static func symmetricEigenvalues(n: Int, a: UnsafeMutablePointer<Self>, lda: Int,
                                     into w: UnsafeMutablePointer<Self>) -> Int
}

@inline(__always)
private func cblasTranspose(_ transpose: Bool) -> CBLAS_TRANSPOSE {
    transpose ? CblasTrans : CblasNoTrans
}

extension Float: TensorScalar {
    public static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
                            alpha: Float, a: UnsafePointer<Float>, lda: Int,
                            b: UnsafePointer<Float>, ldb: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        cblas_sgemm(CblasRowMajor, cblasTranspose(transposeA), cblasTranspose(transposeB),
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb),
                    beta, c, blasint(ldc))
    }

    public static func syrkLower(transpose: Bool, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                                 beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        cblas_ssyrk(CblasRowMajor, CblasLower, cblasTranspose(transpose), blasint(n), blasint(k),
                    alpha, a, blasint(lda), beta, c, blasint(ldc))
    }

    public static func choleskyLower(n: Int, a: UnsafeMutablePointer<Float>, lda: Int, invert: Bool) -> Int {
        // Row-major lower = column-major upper.
        var uplo = CChar(UInt8(ascii: "U")), diag = CChar(UInt8(ascii: "N"))
        var order = Int32(n), ld = Int32(lda), info: Int32 = 0
        spotrf_(&uplo, &order, a, &ld, &info)
        if info == 0 && invert { strtri_(&uplo, &diag, &order, a, &ld, &info) }
        return Int(info)
    }

    public static func symmetricEigenvalues(n: Int, a: UnsafeMutablePointer<Float>, lda: Int,
                                            into w: UnsafeMutablePointer<Float>) -> Int {
        var jobz = CChar(UInt8(ascii: "N")), uplo = CChar(UInt8(ascii: "U"))
        var order = Int32(n), ld = Int32(lda), info: Int32 = 0
        var lwork: Int32 = -1, liwork: Int32 = -1, workSize: Float = 0, iworkSize: Int32 = 0
        ssyevd_(&jobz, &uplo, &order, a, &ld, w, &workSize, &lwork, &iworkSize, &liwork, &info)
        guard info == 0 else { return Int(info) }
        lwork = Int32(workSize); liwork = iworkSize
        var work = [Float](repeating: 0, count: Int(max(lwork, 1)))
        var iwork = [Int32](repeating: 0, count: Int(max(liwork, 1)))
        ssyevd_(&jobz, &uplo, &order, a, &ld, w, &work, &lwork, &iwork, &liwork, &info)
        return Int(info)
    }
}

extension Double: TensorScalar {
    public static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
                            alpha: Double, a: UnsafePointer<Double>, lda: Int,
                            b: UnsafePointer<Double>, ldb: Int,
                            beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int) {
        cblas_dgemm(CblasRowMajor, cblasTranspose(transposeA), cblasTranspose(transposeB),
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb),
                    beta, c, blasint(ldc))
    }

    public static func syrkLower(transpose: Bool, n: Int, k: Int, alpha: Double, a: UnsafePointer<Double>, lda: Int,
                                 beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int) {
        cblas_dsyrk(CblasRowMajor, CblasLower, cblasTranspose(transpose), blasint(n), blasint(k),
                    alpha, a, blasint(lda), beta, c, blasint(ldc))
    }

    public static func choleskyLower(n: Int, a: UnsafeMutablePointer<Double>, lda: Int, invert: Bool) -> Int {
        var uplo = CChar(UInt8(ascii: "U")), diag = CChar(UInt8(ascii: "N"))
        var order = Int32(n), ld = Int32(lda), info: Int32 = 0
        dpotrf_(&uplo, &order, a, &ld, &info)
        if info == 0 && invert { dtrtri_(&uplo, &diag, &order, a, &ld, &info) }
        return Int(info)
    }

    public static func symmetricEigenvalues(n: Int, a: UnsafeMutablePointer<Double>, lda: Int,
                                            into w: UnsafeMutablePointer<Double>) -> Int {
        var jobz = CChar(UInt8(ascii: "N")), uplo = CChar(UInt8(ascii: "U"))
        var order = Int32(n), ld = Int32(lda), info: Int32 = 0
        var lwork: Int32 = -1, liwork: Int32 = -1, workSize: Double = 0, iworkSize: Int32 = 0
        dsyevd_(&jobz, &uplo, &order, a, &ld, w, &workSize, &lwork, &iworkSize, &liwork, &info)
        guard info == 0 else { return Int(info) }
        lwork = Int32(workSize); liwork = iworkSize
        var work = [Double](repeating: 0, count: Int(max(lwork, 1)))
        var iwork = [Int32](repeating: 0, count: Int(max(liwork, 1)))
        dsyevd_(&jobz, &uplo, &order, a, &ld, w, &work, &lwork, &iwork, &liwork, &info)
        return Int(info)
    }
}

/// The number of threads OpenBLAS uses for one call.
public enum BLASThreads {
    /// The current thread count.
    public static var count: Int { Int(openblas_get_num_threads()) }
    /// The number of processors OpenBLAS sees.
    public static var processors: Int { Int(openblas_get_num_procs()) }
    /// Sets the thread count (at least 1).
    public static func set(_ count: Int) { openblas_set_num_threads(Int32(max(1, count))) }
}
