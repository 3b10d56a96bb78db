import Tensor

/// Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional
/// Neural Networks", 2016): a 3×3, stride 1, padding 1 convolution of NCHW images as 16
/// matrix products on transformed 4×4 tiles, each tile giving 2×2 outputs with 16 products
/// instead of 36 (2.25× fewer multiplications than im2col's product).
///
/// For each tile `d` (4×4 input, overlapping by 2) and filter `g` (3×3):
/// `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, summed over input channels as a matrix product per
/// transformed position `ξ` (16 of them):
/// `M[ξ] (OC, tiles) = U[ξ] (OC, C) · V[ξ] (C, tiles)`.
///
/// The same kernel gives a convolution's input gradient: `dX` is the stride-1, padding-1
/// correlation of `dY` with the filters rotated by 180° and the channels swapped (`flipped`).
/// Exact in exact arithmetic (the finite-difference checks in `Double` hold to 1e-6); in
/// `Float` the result differs from im2col's by rounding only.
enum Winograd {
    /// `U[ξ][r][s]` `(16, R, S)` from the filters `w` `(OC, C, 3, 3)`: `R = OC, S = C`, or with
    /// `flipped` `R = C, S = OC` and each filter rotated by 180° (the input gradient's filters).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func transformFilters<Scalar: LayerScalar>(_ w: UnsafePointer<Scalar>, outChannels OC: Int, inChannels C: Int,
                                                      flipped: Bool, into u: UnsafeMutablePointer<Scalar>) {
        let (R, S) = flipped ? (C, OC) : (OC, C)
        let half: Scalar = 0.5
        for o in 0..<OC {
            for c in 0..<C {
                let f = w + (o * C + c) * 9
                // g[i][j], rotated by 180° when flipped
                @inline(__always) func tap(_ i: Int, _ j: Int) -> Scalar { flipped ? f[(2 - i) * 3 + (2 - j)] : f[i * 3 + j] }
                // s = G g  (4×3)
                var s: (Scalar, Scalar, Scalar, Scalar, Scalar, Scalar, Scalar, Scalar, Scalar, Scalar, Scalar, Scalar) =
                    (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
                withUnsafeMutableBytes(of: &s) { raw in
                    let s = raw.baseAddress!.assumingMemoryBound(to: Scalar.self)
                    for j in 0..<3 {
                        let (g0, g1, g2) = (tap(0, j), tap(1, j), tap(2, j))
                        s[0 * 3 + j] = g0
                        s[1 * 3 + j] = (g0 + g1 + g2) * half
                        s[2 * 3 + j] = (g0 - g1 + g2) * half
                        s[3 * 3 + j] = g2
                    }
                    // U = s Gᵀ  (4×4), stored at position ξ = 4i + j of matrix (r, s)
                    let (r, col) = flipped ? (c, o) : (o, c)
                    for i in 0..<4 {
                        let (a0, a1, a2) = (s[i * 3], s[i * 3 + 1], s[i * 3 + 2])
                        u[((i * 4 + 0) * R + r) * S + col] = a0
                        u[((i * 4 + 1) * R + r) * S + col] = (a0 + a1 + a2) * half
                        u[((i * 4 + 2) * R + r) * S + col] = (a0 - a1 + a2) * half
                        u[((i * 4 + 3) * R + r) * S + col] = a2
                    }
                }
            }
        }
    }

    /// The elements of the scratch `V` and `M` a chunk of images aims at (2 MiB of `Float`
    /// each): both stay in the caches between the transforms and the 16 products, which
    /// still get hundreds of columns. On the ResNet step of docs/PERFORMANCE.md (2 threads,
    /// 512 KiB L2 a core) the convolutions took about 20 % less time than with 16 MiB, whose
    /// `V` and `M` went through memory; 1 MiB and 512 KiB were slower again (short products).
    static let chunkElements = 1 << 19

    /// The scratch of one transform of planes `W` wide: the input transform's padded row, O,
    /// E and five rows of four `c` (``inputTransform(_:height:width:tileRows:tileColumns:into:positionStride:scratch:)``),
    /// the gradient transform's (``gradientTransform(_:height:width:tileRows:tileColumns:into:positionStride:scratch:)``)
    /// or the output transform's eight rows of `TW`.
    static func scratchElements(width W: Int) -> Int {
        let TW = (W + 1) / 2, span = splitSpan(tileColumns: TW)
        return max(4 * span + 20 * TW, 6 * span + 2 * TW, 8 * TW) + 16
    }

    /// Elements between the 16 positions' matrices beyond `C · n` (see ``convolve(_:batch:inChannels:outChannels:height:width:filters:output:v:m:imagesPerChunk:)``).
    static let positionPadding = 64

    /// The elements `V` `(16, C, n)` or `M` `(16, OC, n)` takes with `channels` = C or OC.
    static func scratchCount(channels: Int, columns: Int) -> Int { 16 * (channels * columns + positionPadding) }

    /// Images per chunk and the scratch each of `V` `(16, C, n)` and `M` `(16, OC, n)` needs.
    static func chunk(batch: Int, inChannels C: Int, outChannels OC: Int, height H: Int, width W: Int,
                      chunkElements: Int = chunkElements) -> (images: Int, columns: Int) {
        let tiles = ((H + 1) / 2) * ((W + 1) / 2)
        let images = max(1, min(batch, chunkElements / max(16 * max(C, OC) * tiles, 1)))
        return (images, images * tiles)
    }

    /// `y (B, OC, H, W) = conv3×3(x (B, C, H, W))`, stride 1, padding 1, with the transformed
    /// filters `u` `(16, OC, C)`; overwrites `y`. `v` and `m` are scratch of at least
    /// ``scratchCount(channels:columns:)`` elements (of C and OC), `n = images · tiles` (``chunk(batch:inChannels:outChannels:height:width:chunkElements:)``).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func convolve<Scalar: LayerScalar>(_ x: UnsafePointer<Scalar>, batch B: Int, inChannels C: Int,
                                              outChannels OC: Int, height H: Int, width W: Int,
                                              filters u: UnsafePointer<Scalar>, output y: UnsafeMutablePointer<Scalar>,
                                              v: UnsafeMutablePointer<Scalar>, m: UnsafeMutablePointer<Scalar>,
                                              imagesPerChunk: Int) {
        let (TH, TW) = ((H + 1) / 2, (W + 1) / 2)
        let tiles = TH * TW, n = imagesPerChunk * tiles
        // The 16 positions' matrices sit `C·n + 64` (`OC·n + 64`) elements apart, not a
        // multiple of a large power of two: the transforms read or write all 16 at once, and
        // 16 streams 2^k bytes apart would share one set of the L1 and L2 caches.
        let (vStride, mStride) = (C * n + positionPadding, OC * n + positionPadding)
        let scratchCount = scratchElements(width: W)
        for first in Swift.stride(from: 0, to: B, by: imagesPerChunk) {
            let images = min(imagesPerChunk, B - first), columns = images * tiles
            // V[ξ][c][j·tiles + t] = (Bᵀ d B)[ξ] of tile t of channel c of image first + j
            parallelRanges(images * C, minimumPerPart: 4) { planes in
                withUnsafeTemporaryAllocation(of: Scalar.self, capacity: scratchCount) { scratch in
                    for plane in planes {
                        let (j, c) = plane.quotientAndRemainder(dividingBy: C)
                        inputTransform(x + ((first + j) * C + c) * H * W, height: H, width: W, tileRows: TH, tileColumns: TW,
                                       into: v + c * n + j * tiles, positionStride: vStride, scratch: scratch.baseAddress!)
                    }
                }
            }
            // M[ξ] = U[ξ] · V[ξ]                 (OC, columns) = (OC, C) (C, columns)
            for xi in 0..<16 {
                Scalar.gemm(transposeA: false, transposeB: false, m: OC, n: columns, k: C,
                            alpha: 1, a: u + xi * OC * C, lda: C, b: UnsafePointer(v + xi * vStride), ldb: n,
                            beta: 0, c: m + xi * mStride, ldc: n)
            }
            // y[first + j][o] = Aᵀ M A of each tile
            parallelRanges(images * OC, minimumPerPart: 4) { planes in
                withUnsafeTemporaryAllocation(of: Scalar.self, capacity: scratchCount) { scratch in
                    for plane in planes {
                        let (j, o) = plane.quotientAndRemainder(dividingBy: OC)
                        outputTransform(UnsafePointer(m + o * n + j * tiles), positionStride: mStride,
                                        tileRows: TH, tileColumns: TW,
                                        into: y + ((first + j) * OC + o) * H * W, height: H, width: W,
                                        scratch: scratch.baseAddress!)
                    }
                }
            }
        }
    }

    /// Accumulates the filter gradient `dW (OC, C, 3, 3) += ∂/∂W ⟨dY, conv3×3(x)⟩` (stride 1,
    /// padding 1), the adjoint of ``convolve(_:batch:inChannels:outChannels:height:width:filters:output:v:m:imagesPerChunk:)``
    /// in the filters: per position `ξ`, `dU[ξ] (OC, C) = Σ_tiles (A dY Aᵀ)[ξ] (Bᵀ d B)[ξ]ᵀ`
    /// (one product over every tile of the chunk), then `dW += Gᵀ dU G`. 16 products of
    /// `OC × C × tiles` instead of im2col's `OC × 9C × 4·tiles`. `du` is scratch of `16·OC·C`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func filterGradient<Scalar: LayerScalar>(_ x: UnsafePointer<Scalar>, outputGradient dy: UnsafePointer<Scalar>,
                                                    batch B: Int, inChannels C: Int, outChannels OC: Int,
                                                    height H: Int, width W: Int, adding dw: UnsafeMutablePointer<Scalar>,
                                                    v: UnsafeMutablePointer<Scalar>, m: UnsafeMutablePointer<Scalar>,
                                                    du: UnsafeMutablePointer<Scalar>, imagesPerChunk: Int) {
        let (TH, TW) = ((H + 1) / 2, (W + 1) / 2)
        let tiles = TH * TW, n = imagesPerChunk * tiles
        let (vStride, mStride) = (C * n + positionPadding, OC * n + positionPadding)
        let scratchCount = scratchElements(width: W)
        du.update(repeating: 0, count: 16 * OC * C)
        for first in Swift.stride(from: 0, to: B, by: imagesPerChunk) {
            let images = min(imagesPerChunk, B - first), columns = images * tiles
            // V[ξ][c][j·tiles + t] = (Bᵀ d B)[ξ];  M[ξ][o][j·tiles + t] = (A dY Aᵀ)[ξ]
            parallelRanges(images * (C + OC), minimumPerPart: 4) { planes in
                withUnsafeTemporaryAllocation(of: Scalar.self, capacity: scratchCount) { scratch in
                    for plane in planes {
                        let (j, channel) = plane.quotientAndRemainder(dividingBy: C + OC)
                        if channel < C {
                            inputTransform(x + ((first + j) * C + channel) * H * W, height: H, width: W, tileRows: TH,
                                           tileColumns: TW, into: v + channel * n + j * tiles, positionStride: vStride,
                                           scratch: scratch.baseAddress!)
                        } else {
                            let o = channel - C
                            gradientTransform(dy + ((first + j) * OC + o) * H * W, height: H, width: W, tileRows: TH,
                                              tileColumns: TW, into: m + o * n + j * tiles, positionStride: mStride,
                                              scratch: scratch.baseAddress!)
                        }
                    }
                }
            }
            // dU[ξ] += M[ξ] · V[ξ]ᵀ              (OC, C) += (OC, columns) (C, columns)ᵀ
            for xi in 0..<16 {
                Scalar.gemm(transposeA: false, transposeB: true, m: OC, n: C, k: columns,
                            alpha: 1, a: UnsafePointer(m + xi * mStride), lda: n, b: UnsafePointer(v + xi * vStride), ldb: n,
                            beta: 1, c: du + xi * OC * C, ldc: C)
            }
        }
        // dW[o][c] += Gᵀ dU[o][c] G
        let half: Scalar = 0.5
        for o in 0..<OC {
            for c in 0..<C {
                @inline(__always) func u(_ i: Int, _ k: Int) -> Scalar { du[((i * 4 + k) * OC + o) * C + c] }
                let f = dw + (o * C + c) * 9
                // s = Gᵀ dU (3×4), then dW = s G (3×3)
                var s = (Scalar(0), Scalar(0), Scalar(0), Scalar(0), Scalar(0), Scalar(0),
                         Scalar(0), Scalar(0), Scalar(0), Scalar(0), Scalar(0), Scalar(0))
                withUnsafeMutableBytes(of: &s) { raw in
                    let s = raw.baseAddress!.assumingMemoryBound(to: Scalar.self)
                    for k in 0..<4 {
                        let (u0, u1, u2, u3) = (u(0, k), u(1, k), u(2, k), u(3, k))
                        s[0 * 4 + k] = u0 + (u1 + u2) * half
                        s[1 * 4 + k] = (u1 - u2) * half
                        s[2 * 4 + k] = (u1 + u2) * half + u3
                    }
                    for i in 0..<3 {
                        let (a0, a1, a2, a3) = (s[i * 4], s[i * 4 + 1], s[i * 4 + 2], s[i * 4 + 3])
                        f[i * 3 + 0] += a0 + (a1 + a2) * half
                        f[i * 3 + 1] += (a1 - a2) * half
                        f[i * 3 + 2] += (a1 + a2) * half + a3
                    }
                }
            }
        }
    }

    /// `A e Aᵀ` of every 2×2 output-gradient tile `e` of one plane (zero beyond the plane's
    /// edge), position `ξ = 4i + k` of tile `t` to `target[ξ · positionStride + t]`; with
    /// `A = [[1, 0], [1, 1], [1, −1], [0, −1]]`. Vectorised along rows: per tile row, both
    /// input rows split into even and odd columns (``deinterleave(_:blocks:even:odd:)``), the
    /// rows of `A e` (`e0`, `e0 + e1`, `e0 − e1`, `−e1`) formed on those halves, and each one's
    /// columns `E`, `E + O`, `E − O`, `−O` written to `target`. `scratch` holds
    /// ``scratchElements(width:)``.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func gradientTransform<Scalar: LayerScalar>(_ plane: UnsafePointer<Scalar>, height H: Int, width W: Int,
                                                       tileRows TH: Int, tileColumns TW: Int,
                                                       into target: UnsafeMutablePointer<Scalar>, positionStride: Int,
                                                       scratch: UnsafeMutablePointer<Scalar>) {
        // The row with zeros after it up to `2 · span`; E and O of both rows (`span` each);
        // E and O of a row of `A e` (TW each).
        let span = splitSpan(tileColumns: TW)
        let padded = scratch, even0 = scratch + 2 * span, odd0 = even0 + span, even1 = odd0 + span, odd1 = even1 + span
        let (rowEven, rowOdd) = (odd1 + span, odd1 + span + TW)
        (padded + W).update(repeating: 0, count: 2 * span - W)
        for a in 0..<TH {
            padded.update(from: plane + 2 * a * W, count: W)
            deinterleave(UnsafePointer(padded), blocks: span / 8, even: even0, odd: odd0)
            if 2 * a + 1 < H {
                padded.update(from: plane + (2 * a + 1) * W, count: W)
                deinterleave(UnsafePointer(padded), blocks: span / 8, even: even1, odd: odd1)
            } else {
                even1.update(repeating: 0, count: TW)
                odd1.update(repeating: 0, count: TW)
            }
            for i in 0..<4 {
                // row i of A e, split: e0, e0 + e1, e0 − e1, −e1
                switch i {
                case 0:
                    rowEven.update(from: even0, count: TW)
                    rowOdd.update(from: odd0, count: TW)
                case 1:
                    for b in 0..<TW { rowEven[b] = even0[b] + even1[b] }
                    for b in 0..<TW { rowOdd[b] = odd0[b] + odd1[b] }
                case 2:
                    for b in 0..<TW { rowEven[b] = even0[b] - even1[b] }
                    for b in 0..<TW { rowOdd[b] = odd0[b] - odd1[b] }
                default:
                    for b in 0..<TW { rowEven[b] = -even1[b] }
                    for b in 0..<TW { rowOdd[b] = -odd1[b] }
                }
                let v0 = target + (4 * i) * positionStride + a * TW
                let (v1, v2, v3) = (v0 + positionStride, v0 + 2 * positionStride, v0 + 3 * positionStride)
                v0.update(from: rowEven, count: TW)
                for b in 0..<TW { v1[b] = rowEven[b] + rowOdd[b] }
                for b in 0..<TW { v2[b] = rowEven[b] - rowOdd[b] }
                for b in 0..<TW { v3[b] = -rowOdd[b] }
            }
        }
    }

    /// `Bᵀ d B` of every 4×4 tile of one plane (padding 1: the tile of output tile `(a, b)`
    /// starts at input row `2a − 1`, column `2b − 1`); position `ξ = 4i + k` of tile
    /// `t = a · TW + b` goes to `target[ξ · positionStride + t]`.
    ///
    /// Separable: `d B` first, once per input row (each row belongs to two tile rows): the row
    /// split into its odd and even columns `O[b] = d[2b − 1]`, `E[b] = d[2b]` (zero outside the
    /// plane) by ``deinterleave(_:blocks:even:odd:)``, so that the four columns `c_k` of
    /// consecutive tiles are contiguous: `O[b] − O[b+1]`, `E[b] + O[b+1]`, `O[b+1] − E[b]`,
    /// `E[b] − E[b+1]`. Then `Bᵀ (d B)` of each tile row from its four input rows `r0 … r3`:
    /// `c(r0) − c(r2)`, `c(r1) + c(r2)`, `c(r2) − c(r1)`, `c(r1) − c(r3)`, each straight to
    /// `target`. `scratch` holds ``scratchElements(width:)``.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func inputTransform<Scalar: LayerScalar>(_ plane: UnsafePointer<Scalar>, height H: Int, width W: Int,
                                                    tileRows TH: Int, tileColumns TW: Int,
                                                    into target: UnsafeMutablePointer<Scalar>, positionStride: Int,
                                                    scratch: UnsafeMutablePointer<Scalar>) {
        // The row with a zero before it and zeros after it up to `2 · span − 1`; O and E
        // (`span` each); four rows' `c` (4 TW each, row r in slot (r + 1) mod 4); a zero `c`.
        let span = splitSpan(tileColumns: TW)
        let padded = scratch + 1, odd = scratch + 2 * span, even = odd + span
        let slots = even + span, zero = slots + 16 * TW
        padded[-1] = 0
        (padded + W).update(repeating: 0, count: 2 * span - 1 - W)
        zero.update(repeating: 0, count: 4 * TW)
        @inline(__always) func columns(_ r: Int) -> UnsafeMutablePointer<Scalar> {
            r >= 0 && r < H ? slots + ((r + 1) & 3) * 4 * TW : zero
        }
        // c_k of input row r, k = 0 … 3, TW apart
        @inline(__always) func transformRow(_ r: Int) {
            guard r >= 0 && r < H else { return }
            padded.update(from: plane + r * W, count: W)
            deinterleave(UnsafePointer(padded - 1), blocks: span / 8, even: odd, odd: even)
            let c0 = columns(r)
            let (c1, c2, c3) = (c0 + TW, c0 + 2 * TW, c0 + 3 * TW)
            for b in 0..<TW { c0[b] = odd[b] - odd[b + 1] }
            for b in 0..<TW { c1[b] = even[b] + odd[b + 1] }
            for b in 0..<TW { c2[b] = odd[b + 1] - even[b] }
            for b in 0..<TW { c3[b] = even[b] - even[b + 1] }
        }
        transformRow(0)
        for a in 0..<TH {
            transformRow(2 * a + 1)
            transformRow(2 * a + 2)
            let (r0, r1, r2, r3) = (UnsafePointer(columns(2 * a - 1)), UnsafePointer(columns(2 * a)),
                                    UnsafePointer(columns(2 * a + 1)), UnsafePointer(columns(2 * a + 2)))
            let tileRow = target + a * TW
            for k in 0..<4 {
                let (d0, d1, d2, d3) = (r0 + k * TW, r1 + k * TW, r2 + k * TW, r3 + k * TW)
                // One output a loop: two loads and a store each, which the compiler vectorises
                // (four outputs in one loop need more run-time alias checks than it makes).
                let v0 = tileRow + k * positionStride
                let (v1, v2, v3) = (v0 + 4 * positionStride, v0 + 8 * positionStride, v0 + 12 * positionStride)
                for b in 0..<TW { v0[b] = d0[b] - d2[b] }
                for b in 0..<TW { v1[b] = d1[b] + d2[b] }
                for b in 0..<TW { v2[b] = d2[b] - d1[b] }
                for b in 0..<TW { v3[b] = d1[b] - d3[b] }
            }
        }
    }

    /// The elements ``deinterleave(_:blocks:even:odd:)`` writes of each half for a row of
    /// `TW` tiles: `TW + 1` rounded up to whole blocks of 8.
    static func splitSpan(tileColumns TW: Int) -> Int { (TW + 1 + 7) / 8 * 8 }

    /// `even[b] = p[2b]`, `odd[b] = p[2b + 1]` for `b < 8 · blocks` (reads `p[0 ..< 16 · blocks]`).
    /// In `Float`, sixteen elements a load, split by two shuffles each half (SIMD16's
    /// `evenHalf`, `oddHalf`).
    @inline(__always)
    static func deinterleave<Scalar: LayerScalar>(_ p: UnsafePointer<Scalar>, blocks: Int,
                                                  even: UnsafeMutablePointer<Scalar>, odd: UnsafeMutablePointer<Scalar>) {
        if Scalar.self == Float.self {
            let source = UnsafeRawPointer(p)
            let (evenBytes, oddBytes) = (UnsafeMutableRawPointer(even), UnsafeMutableRawPointer(odd))
            for block in 0..<blocks {
                let v = source.loadUnaligned(fromByteOffset: 64 * block, as: SIMD16<Float>.self)
                evenBytes.storeBytes(of: v.evenHalf, toByteOffset: 32 * block, as: SIMD8<Float>.self)
                oddBytes.storeBytes(of: v.oddHalf, toByteOffset: 32 * block, as: SIMD8<Float>.self)
            }
        } else {
            for b in 0..<8 * blocks {
                even[b] = p[2 * b]
                odd[b] = p[2 * b + 1]
            }
        }
    }

    /// `Aᵀ m A` of every tile of one output plane: `m[ξ · positionStride + t]` → the 2×2
    /// outputs at row `2a`, column `2b` (clipped at the plane's edge). Vectorised along tile
    /// rows like ``inputTransform(_:height:width:tileRows:tileColumns:into:positionStride:scratch:)``;
    /// `scratch` holds `8 TW` elements.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func outputTransform<Scalar: LayerScalar>(_ m: UnsafePointer<Scalar>, positionStride: Int,
                                                     tileRows TH: Int, tileColumns TW: Int,
                                                     into plane: UnsafeMutablePointer<Scalar>, height H: Int, width W: Int,
                                                     scratch p: UnsafeMutablePointer<Scalar>) {
        for a in 0..<TH {
            // p[i][0] = m_i0 + m_i1 + m_i2, p[i][1] = m_i1 − m_i2 − m_i3 (m A, row i of each tile)
            for i in 0..<4 {
                let q0 = m + (4 * i) * positionStride + a * TW
                let (q1, q2, q3) = (q0 + positionStride, q0 + 2 * positionStride, q0 + 3 * positionStride)
                let (p0, p1) = (p + (2 * i) * TW, p + (2 * i + 1) * TW)
                for b in 0..<TW { p0[b] = q0[b] + q1[b] + q2[b] }
                for b in 0..<TW { p1[b] = q1[b] - q2[b] - q3[b] }
            }
            // y = Aᵀ (m A): row 2a = p0 + p1 + p2, row 2a + 1 = p1 − p2 − p3 (per output column)
            let (p00, p01, p10, p11) = (p, p + TW, p + 2 * TW, p + 3 * TW)
            let (p20, p21, p30, p31) = (p + 4 * TW, p + 5 * TW, p + 6 * TW, p + 7 * TW)
            let row0 = plane + 2 * a * W
            let fullPairs = W / 2
            for b in 0..<fullPairs {
                row0[2 * b] = p00[b] + p10[b] + p20[b]
                row0[2 * b + 1] = p01[b] + p11[b] + p21[b]
            }
            if W % 2 == 1 { row0[W - 1] = p00[TW - 1] + p10[TW - 1] + p20[TW - 1] }
            guard 2 * a + 1 < H else { continue }
            let row1 = row0 + W
            for b in 0..<fullPairs {
                row1[2 * b] = p10[b] - p20[b] - p30[b]
                row1[2 * b + 1] = p11[b] - p21[b] - p31[b]
            }
            if W % 2 == 1 { row1[W - 1] = p10[TW - 1] - p20[TW - 1] - p30[TW - 1] }
        }
    }
}
