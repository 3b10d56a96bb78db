import Tensor

/// Winograd's minimal filtering F(4×4, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional
/// Neural Networks", 2016; interpolation points 0, ±1, ±2, ∞): a 3×3, stride 1, padding 1
/// convolution of NCHW images as 36 matrix products on transformed 6×6 tiles, each tile giving
/// 4×4 outputs with 36 products instead of 144 (4× fewer multiplications than im2col's
/// product; F(2×2, 3×3) saves 2.25× and moves 4 transformed values an output instead of 2.25).
///
/// For each tile `d` (6×6 input, overlapping by 2) and filter `g` (3×3):
/// `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, summed over input channels as a matrix product per
/// transformed position `ξ` (36 of them):
/// `M[ξ] (OC, tiles) = U[ξ] (OC, C) · V[ξ] (C, tiles)`, with
///
///     Bᵀ = [4  0 −5  0  1  0]     G = [ 1/4     0     0]     Aᵀ = [1  1  1  1  1  0]
///          [0 −4 −4  1  1  0]         [−1/6  −1/6  −1/6]          [0  1 −1  2 −2  0]
///          [0  4 −4 −1  1  0]         [−1/6   1/6  −1/6]          [0  1  1  4  4  0]
///          [0 −2 −1  2  1  0]         [1/24  1/12   1/6]          [0  1 −1  8 −8  1]
///          [0  2 −1 −2  1  0]         [1/24 −1/12   1/6]
///          [0  4  0 −5  0  1]         [   0     0     1]
///
/// The same kernel gives a convolution's input gradient: `dX` is the stride-1, padding-1
/// correlation of `dY` with the filters rotated by 180° and the channels swapped (`flipped`).
/// Exact in exact arithmetic (the finite-difference checks in `Double` hold to 1e-6); in
/// `Float` the result differs from im2col's by rounding only: within 1e-5 of the largest value
/// on the test's layers (`testWinogradMatchesIm2colInFloat`), though the transforms'
/// coefficients (up to 8 and 1/24) round more than F(2×2, 3×3)'s.
enum Winograd {
    /// Transformed positions `ξ = 6i + k` of a tile.
    static let positions = 36

    /// Output tiles of a plane `H × W`: `(⌈H/4⌉, ⌈W/4⌉)`.
    static func tileGrid(height H: Int, width W: Int) -> (rows: Int, columns: Int) { ((H + 3) / 4, (W + 3) / 4) }

    /// `(G x)_0 … (G x)_5` of a column `x` of three.
    @inline(__always)
    static func filterColumn<Scalar: LayerScalar>(_ x0: Scalar, _ x1: Scalar, _ x2: Scalar)
        -> (Scalar, Scalar, Scalar, Scalar, Scalar, Scalar) {
        let sum = x0 + x2
        return (x0 / 4, -(sum + x1) / 6, -(sum - x1) / 6,
                x0 / 24 + x1 / 12 + x2 / 6, x0 / 24 - x1 / 12 + x2 / 6, x2)
    }

    /// `(Gᵀ u)_0 … (Gᵀ u)_2` of a column `u` of six (the adjoint of ``filterColumn(_:_:_:)``).
    @inline(__always)
    static func filterColumnAdjoint<Scalar: LayerScalar>(_ u0: Scalar, _ u1: Scalar, _ u2: Scalar, _ u3: Scalar,
                                                         _ u4: Scalar, _ u5: Scalar) -> (Scalar, Scalar, Scalar) {
        (u0 / 4 - (u1 + u2) / 6 + (u3 + u4) / 24,
         (u2 - u1) / 6 + (u3 - u4) / 12,
         -(u1 + u2) / 6 + (u3 + u4) / 6 + u5)
    }

    /// `U[ξ][r][s]` `(36, R, S)` from the filters `w` `(OC, C, 3, 3)`: `R = OC, S = C`, or with
    /// `flipped` `R = C, S = OC` and each filter rotated by 180° (the input gradient's filters).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func transformFilters<Scalar: LayerScalar>(_ w: UnsafePointer<Scalar>, outChannels OC: Int, inChannels C: Int,
                                                      flipped: Bool, into u: UnsafeMutablePointer<Scalar>) {
        let (R, S) = flipped ? (C, OC) : (OC, C)
        withUnsafeTemporaryAllocation(of: Scalar.self, capacity: 18) { buffer in
            let s = buffer.baseAddress!  // G g, 6×3
            for o in 0..<OC {
                for c in 0..<C {
                    let f = w + (o * C + c) * 9
                    // g[i][j], rotated by 180° when flipped
                    @inline(__always) func tap(_ i: Int, _ j: Int) -> Scalar { flipped ? f[(2 - i) * 3 + (2 - j)] : f[i * 3 + j] }
                    for j in 0..<3 {
                        let column = filterColumn(tap(0, j), tap(1, j), tap(2, j))
                        (s[j], s[3 + j], s[6 + j], s[9 + j], s[12 + j], s[15 + j]) = column
                    }
                    // U = (G g) Gᵀ, row i at positions 6i … 6i + 5 of matrix (r, col)
                    let (r, col) = flipped ? (c, o) : (o, c)
                    for i in 0..<6 {
                        let row = filterColumn(s[3 * i], s[3 * i + 1], s[3 * i + 2])
                        let target = u + (6 * i * R + r) * S + col, step = R * S
                        target[0] = row.0
                        target[step] = row.1
                        target[2 * step] = row.2
                        target[3 * step] = row.3
                        target[4 * step] = row.4
                        target[5 * step] = row.5
                    }
                }
            }
        }
    }

    /// The elements of the scratch `V` and `M` a chunk of images aims at (4 MiB of `Float`
    /// each): both stay in the caches between the transforms and the 36 products, which
    /// still get hundreds of columns. On the ResNet step of docs/PERFORMANCE.md (2 threads,
    /// 512 KiB L2 a core, 32 MiB L3) 2²⁰ gave the shortest step in alternating runs (1,666 and
    /// 1,556 ms against 1,730 and 1,799 at 2¹⁹ and 1,965 and 1,674 at 2²¹); F(2×2, 3×3)'s
    /// 16 MiB went through memory and was ~20 % slower than 2 MiB.
    static let chunkElements = 1 << 20

    /// The tiles a transform aims to take at once: its loops run over a segment of this many
    /// tiles, not over one tile row of `TW` (8 at a ResNet's first stage, 1 at its last).
    static let segmentTiles = 256

    /// A transform's unit of work, a *segment*: `images` planes (the same channel of
    /// consecutive images, whose tiles are consecutive columns of `V` and `M`) of `rows` tile
    /// rows each. Small planes go several to a segment (all their tile rows); a plane of more
    /// than ``segmentTiles`` tiles goes in groups of tile rows.
    static func segmentShape(tileRows TH: Int, tileColumns TW: Int, images: Int) -> (images: Int, rows: Int) {
        let tiles = TH * TW
        if tiles >= segmentTiles { return (1, max(1, min(TH, segmentTiles / max(TW, 1)))) }
        return (max(1, min(images, segmentTiles / max(tiles, 1))), TH)
    }

    /// The scratch of one transform of a segment of planes `W` wide (the largest of the input
    /// transform's, the gradient transform's and the output transform's).
    static func scratchElements(width W: Int) -> Int {
        let TW = (W + 3) / 4, span = splitSpan(tileColumns: TW)
        // a segment has at most max(segmentTiles, TW) tiles; input: padded row and four
        // phases (8 span), 6 × 6 runs of `c`; gradient: 8 span and 6 × 4; output: 24 + 16
        return 8 * span + 40 * max(segmentTiles, TW) + 16
    }

    /// Runs `body(channel, firstImage, images, firstTileRow, tileRows)` for every segment
    /// (``segmentShape(tileRows:tileColumns:images:)``) of `channels` channels of `images`
    /// images, over the threads.
    @inline(__always)
    static func forEachSegment(channels: Int, images: Int, tileRows TH: Int, tileColumns TW: Int,
                               _ body: (_ channel: Int, _ firstImage: Int, _ images: Int, _ firstTileRow: Int, _ tileRows: Int) -> Void) {
        let shape = segmentShape(tileRows: TH, tileColumns: TW, images: images)
        let imageGroups = (images + shape.images - 1) / shape.images, rowGroups = (TH + shape.rows - 1) / shape.rows
        parallelRanges(channels * imageGroups * rowGroups, minimumPerPart: 1) { segments in
            for segment in segments {
                let (channel, rest) = segment.quotientAndRemainder(dividingBy: imageGroups * rowGroups)
                let (imageGroup, rowGroup) = rest.quotientAndRemainder(dividingBy: rowGroups)
                let (firstImage, firstRow) = (imageGroup * shape.images, rowGroup * shape.rows)
                body(channel, firstImage, min(shape.images, images - firstImage), firstRow, min(shape.rows, TH - firstRow))
            }
        }
    }

    /// Elements between the 36 positions' matrices beyond `C · n` (see ``convolve(_:batch:inChannels:outChannels:height:width:filters:output:v:m:imagesPerChunk:)``).
    static let positionPadding = 64

    /// The elements `V` `(36, C, n)` or `M` `(36, OC, n)` takes with `channels` = C or OC.
    static func scratchCount(channels: Int, columns: Int) -> Int { positions * (channels * columns + positionPadding) }

    /// Images per chunk and the columns `n = images · tiles` of `V` `(36, C, n)` and `M` `(36, OC, n)`.
    static func chunk(batch: Int, inChannels C: Int, outChannels OC: Int, height H: Int, width W: Int,
                      chunkElements: Int = chunkElements) -> (images: Int, columns: Int) {
        let (TH, TW) = tileGrid(height: H, width: W)
        let tiles = TH * TW
        let images = max(1, min(batch, chunkElements / max(positions * max(C, OC) * tiles, 1)))
        return (images, images * tiles)
    }

    /// `y (B, OC, H, W) = conv3×3(x (B, C, H, W))`, stride 1, padding 1, with the transformed
    /// filters `u` `(36, OC, C)`; overwrites `y`. `v` and `m` are scratch of at least
    /// ``scratchCount(channels:columns:)`` elements (of C and OC), `n = images · tiles` (``chunk(batch:inChannels:outChannels:height:width:chunkElements:)``).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func convolve<Scalar: LayerScalar>(_ x: UnsafePointer<Scalar>, batch B: Int, inChannels C: Int,
                                              outChannels OC: Int, height H: Int, width W: Int,
                                              filters u: UnsafePointer<Scalar>, output y: UnsafeMutablePointer<Scalar>,
                                              v: UnsafeMutablePointer<Scalar>, m: UnsafeMutablePointer<Scalar>,
                                              imagesPerChunk: Int) {
        let (TH, TW) = tileGrid(height: H, width: W)
        let tiles = TH * TW, n = imagesPerChunk * tiles
        // The 36 positions' matrices sit `C·n + 64` (`OC·n + 64`) elements apart, not a
        // multiple of a large power of two: the transforms read or write all 36 at once, and
        // streams 2^k bytes apart would share one set of the L1 and L2 caches.
        let (vStride, mStride) = (C * n + positionPadding, OC * n + positionPadding)
        let scratchCount = scratchElements(width: W)
        for first in Swift.stride(from: 0, to: B, by: imagesPerChunk) {
            let images = min(imagesPerChunk, B - first), columns = images * tiles
            // V[ξ][c][j·tiles + t] = (Bᵀ d B)[ξ] of tile t of channel c of image first + j
            forEachSegment(channels: C, images: images, tileRows: TH, tileColumns: TW) { c, j, count, a, rows in
                withUnsafeTemporaryAllocation(of: Scalar.self, capacity: scratchCount) { scratch in
                    inputTransform(x + ((first + j) * C + c) * H * W, planeStride: C * H * W, planes: count,
                                   height: H, width: W, tileColumns: TW, firstTileRow: a, tileRows: rows,
                                   into: v + c * n + j * tiles + a * TW, positionStride: vStride, scratch: scratch.baseAddress!)
                }
            }
            // M[ξ] = U[ξ] · V[ξ]                 (OC, columns) = (OC, C) (C, columns)
            for xi in 0..<positions {
                Scalar.gemm(transposeA: false, transposeB: false, m: OC, n: columns, k: C,
                            alpha: 1, a: u + xi * OC * C, lda: C, b: UnsafePointer(v + xi * vStride), ldb: n,
                            beta: 0, c: m + xi * mStride, ldc: n)
            }
            // y[first + j][o] = Aᵀ M A of each tile
            forEachSegment(channels: OC, images: images, tileRows: TH, tileColumns: TW) { o, j, count, a, rows in
                withUnsafeTemporaryAllocation(of: Scalar.self, capacity: scratchCount) { scratch in
                    outputTransform(UnsafePointer(m + o * n + j * tiles + a * TW), positionStride: mStride,
                                    tileColumns: TW, firstTileRow: a, tileRows: rows,
                                    into: y + ((first + j) * OC + o) * H * W, planeStride: OC * H * W, planes: count,
                                    height: H, width: W, scratch: scratch.baseAddress!)
                }
            }
        }
    }

    /// Accumulates the filter gradient `dW (OC, C, 3, 3) += ∂/∂W ⟨dY, conv3×3(x)⟩` (stride 1,
    /// padding 1), the adjoint of ``convolve(_:batch:inChannels:outChannels:height:width:filters:output:v:m:imagesPerChunk:)``
    /// in the filters: per position `ξ`, `dU[ξ] (OC, C) = Σ_tiles (A dY Aᵀ)[ξ] (Bᵀ d B)[ξ]ᵀ`
    /// (one product over every tile of the chunk), then `dW += Gᵀ dU G`. 36 products of
    /// `OC × C × tiles` instead of im2col's `OC × 9C × 16·tiles`. `du` is scratch of `36·OC·C`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func filterGradient<Scalar: LayerScalar>(_ x: UnsafePointer<Scalar>, outputGradient dy: UnsafePointer<Scalar>,
                                                    batch B: Int, inChannels C: Int, outChannels OC: Int,
                                                    height H: Int, width W: Int, adding dw: UnsafeMutablePointer<Scalar>,
                                                    v: UnsafeMutablePointer<Scalar>, m: UnsafeMutablePointer<Scalar>,
                                                    du: UnsafeMutablePointer<Scalar>, imagesPerChunk: Int) {
        let (TH, TW) = tileGrid(height: H, width: W)
        let tiles = TH * TW, n = imagesPerChunk * tiles
        let (vStride, mStride) = (C * n + positionPadding, OC * n + positionPadding)
        let scratchCount = scratchElements(width: W)
        du.update(repeating: 0, count: positions * OC * C)
        for first in Swift.stride(from: 0, to: B, by: imagesPerChunk) {
            let images = min(imagesPerChunk, B - first), columns = images * tiles
            // V[ξ][c][j·tiles + t] = (Bᵀ d B)[ξ];  M[ξ][o][j·tiles + t] = (A dY Aᵀ)[ξ]
            forEachSegment(channels: C + OC, images: images, tileRows: TH, tileColumns: TW) { channel, j, count, a, rows in
                withUnsafeTemporaryAllocation(of: Scalar.self, capacity: scratchCount) { scratch in
                    if channel < C {
                        inputTransform(x + ((first + j) * C + channel) * H * W, planeStride: C * H * W, planes: count,
                                       height: H, width: W, tileColumns: TW, firstTileRow: a, tileRows: rows,
                                       into: v + channel * n + j * tiles + a * TW, positionStride: vStride,
                                       scratch: scratch.baseAddress!)
                    } else {
                        let o = channel - C
                        gradientTransform(dy + ((first + j) * OC + o) * H * W, planeStride: OC * H * W, planes: count,
                                          height: H, width: W, tileColumns: TW, firstTileRow: a, tileRows: rows,
                                          into: m + o * n + j * tiles + a * TW, positionStride: mStride,
                                          scratch: scratch.baseAddress!)
                    }
                }
            }
            // dU[ξ] += M[ξ] · V[ξ]ᵀ              (OC, C) += (OC, columns) (C, columns)ᵀ
            for xi in 0..<positions {
                Scalar.gemm(transposeA: false, transposeB: true, m: OC, n: C, k: columns,
                            alpha: 1, a: UnsafePointer(m + xi * mStride), lda: n, b: UnsafePointer(v + xi * vStride), ldb: n,
                            beta: 1, c: du + xi * OC * C, ldc: C)
            }
        }
        // dW[o][c] += Gᵀ dU[o][c] G
        withUnsafeTemporaryAllocation(of: Scalar.self, capacity: 18) { buffer in
            let s = buffer.baseAddress!  // Gᵀ dU, 3×6
            for o in 0..<OC {
                for c in 0..<C {
                    @inline(__always) func u(_ i: Int, _ k: Int) -> Scalar { du[((6 * i + k) * OC + o) * C + c] }
                    for k in 0..<6 {
                        (s[k], s[6 + k], s[12 + k]) = filterColumnAdjoint(u(0, k), u(1, k), u(2, k), u(3, k), u(4, k), u(5, k))
                    }
                    let f = dw + (o * C + c) * 9
                    for i in 0..<3 {
                        let row = s + 6 * i
                        let (a0, a1, a2) = filterColumnAdjoint(row[0], row[1], row[2], row[3], row[4], row[5])
                        f[3 * i] += a0
                        f[3 * i + 1] += a1
                        f[3 * i + 2] += a2
                    }
                }
            }
        }
    }

    /// The elements ``deinterleave4(_:blocks:into:stride:)`` writes of each phase for a row
    /// of `TW` tiles: `TW + 1` rounded up to whole blocks of 4.
    static func splitSpan(tileColumns TW: Int) -> Int { (TW + 1 + 3) / 4 * 4 }

    /// `phases[q · stride + b] = p[4b + q]`, `q = 0 … 3`, for `b < 4 · blocks` (reads
    /// `p[0 ..< 16 · blocks]`). In `Float`, sixteen elements a load, split by SIMD16's and
    /// SIMD8's `evenHalf` / `oddHalf` (shuffles).
    @inline(__always)
    static func deinterleave4<Scalar: LayerScalar>(_ p: UnsafePointer<Scalar>, blocks: Int,
                                                   into phases: UnsafeMutablePointer<Scalar>, stride: Int) {
        if Scalar.self == Float.self {
            let source = UnsafeRawPointer(p), target = UnsafeMutableRawPointer(phases)
            let rowBytes = stride * MemoryLayout<Float>.stride
            for block in 0..<blocks {
                let v = source.loadUnaligned(fromByteOffset: 64 * block, as: SIMD16<Float>.self)
                let (even, odd) = (v.evenHalf, v.oddHalf)
                target.storeBytes(of: even.evenHalf, toByteOffset: 16 * block, as: SIMD4<Float>.self)
                target.storeBytes(of: odd.evenHalf, toByteOffset: rowBytes + 16 * block, as: SIMD4<Float>.self)
                target.storeBytes(of: even.oddHalf, toByteOffset: 2 * rowBytes + 16 * block, as: SIMD4<Float>.self)
                target.storeBytes(of: odd.oddHalf, toByteOffset: 3 * rowBytes + 16 * block, as: SIMD4<Float>.self)
            }
        } else {
            for b in 0..<4 * blocks {
                for q in 0..<4 { phases[q * stride + b] = p[4 * b + q] }
            }
        }
    }

    /// `Bᵀ d B` of every 6×6 tile of a segment: tile rows `firstTileRow ..< firstTileRow + rows`
    /// of `planes` planes `planeStride` apart (padding 1: the tile of output tile `(a, b)`
    /// starts at input row `4a − 1`, column `4b − 1`); position `ξ = 6i + k` of the segment's
    /// tile `f = (j · rows + a') · TW + b` goes to `target[ξ · positionStride + f]`.
    ///
    /// Separable: `d B` once per input row, the row split into four phases
    /// `P_q[b] = d[4b − 1 + q]` (zero outside the plane) by ``deinterleave4(_:blocks:into:stride:)``,
    /// so that a tile's six taps are `P_0 … P_3[b]`, `P_0[b+1]`, `P_1[b+1]`; its six columns
    /// `c_k = (Bᵀ taps)_k` go to run `s` of `c[k]` at the segment's tile row, for each tile
    /// row whose input row `s` it is (rows `4a + 3` and `4a + 4` are rows 0 and 1 of the next
    /// tile row too). Then each position `Bᵀ (d B)` over the whole segment in one loop (every
    /// tile row's input row `s` is one run), straight to `target`. `scratch` holds
    /// ``scratchElements(width:)``.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func inputTransform<Scalar: LayerScalar>(_ planes: UnsafePointer<Scalar>, planeStride: Int, planes J: Int,
                                                    height H: Int, width W: Int, tileColumns TW: Int,
                                                    firstTileRow: Int, tileRows rows: Int,
                                                    into target: UnsafeMutablePointer<Scalar>, positionStride: Int,
                                                    scratch: UnsafeMutablePointer<Scalar>) {
        // The row with a zero before it and zeros after it up to `4 · span − 1`; the four
        // phases (`span` each); c[k][s][j · rows + a'][TW], s = 0 … 5.
        let span = splitSpan(tileColumns: TW), L = J * rows * TW
        let padded = scratch + 1, phases = scratch + 4 * span, c = phases + 4 * span
        padded[-1] = 0
        (padded + W).update(repeating: 0, count: 4 * span - 1 - W)
        let (p0, p1, p2, p3) = (UnsafePointer(phases), UnsafePointer(phases + span),
                                UnsafePointer(phases + 2 * span), UnsafePointer(phases + 3 * span))
        for j in 0..<J {
            let plane = planes + j * planeStride
            // input row r = 4 · firstTileRow − 1 + R: run q of tile row a', and run 4 + q of a' − 1
            for R in 0 ..< 4 * rows + 2 {
                let r = 4 * firstTileRow - 1 + R
                let (q, a) = (R & 3, R >> 2)
                let primary = a < rows ? c + q * L + (j * rows + a) * TW : nil
                let secondary = q < 2 && a >= 1 ? c + (4 + q) * L + (j * rows + a - 1) * TW : nil
                let c0 = primary ?? secondary!
                if r >= 0 && r < H {
                    padded.update(from: plane + r * W, count: W)
                    deinterleave4(UnsafePointer(padded - 1), blocks: span / 4, into: phases, stride: span)
                    applyBT(p0, p1, p2, p3, p0 + 1, p1 + 1, count: TW, into: c0, stride: 6 * L)
                } else {
                    for k in 0..<6 { (c0 + k * 6 * L).update(repeating: 0, count: TW) }
                }
                if let primary, let secondary {
                    for k in 0..<6 { (secondary + k * 6 * L).update(from: primary + k * 6 * L, count: TW) }
                }
            }
        }
        for k in 0..<6 {
            let base = UnsafePointer(c + k * 6 * L)
            let (d0, d1, d2, d3, d4, d5) = (base, base + L, base + 2 * L, base + 3 * L, base + 4 * L, base + 5 * L)
            // (Bᵀ rows) position 6i + k
            applyBT(d0, d1, d2, d3, d4, d5, count: L, into: target + k * positionStride, stride: 6 * positionStride)
        }
    }

    /// `A e Aᵀ` of every 4×4 output-gradient tile `e` of a segment (as in
    /// ``inputTransform(_:planeStride:planes:height:width:tileColumns:firstTileRow:tileRows:into:positionStride:scratch:)``;
    /// zero beyond the plane's edge), position `ξ = 6i + k` of tile `f` to
    /// `target[ξ · positionStride + f]`; `A` is `Aᵀ` transposed (6×4): `(A e)` = `e0`,
    /// `e0+e1+e2+e3`, `e0−e1+e2−e3`, `e0+2e1+4e2+8e3`, `e0−2e1+4e2−8e3`, `e3`. Each input row
    /// split into its four phases `Q_l[b] = e[4b + l]` and its six columns formed into run `l`
    /// of `c[k]`, then each position over the whole segment in one loop. `scratch` holds
    /// ``scratchElements(width:)``.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func gradientTransform<Scalar: LayerScalar>(_ planes: UnsafePointer<Scalar>, planeStride: Int, planes J: Int,
                                                       height H: Int, width W: Int, tileColumns TW: Int,
                                                       firstTileRow: Int, tileRows rows: Int,
                                                       into target: UnsafeMutablePointer<Scalar>, positionStride: Int,
                                                       scratch: UnsafeMutablePointer<Scalar>) {
        // The row with zeros after it up to `4 · span`; the four phases; c[k][l][j · rows + a'][TW].
        let span = splitSpan(tileColumns: TW), L = J * rows * TW
        let padded = scratch, phases = scratch + 4 * span, c = phases + 4 * span
        (padded + W).update(repeating: 0, count: 4 * span - W)
        let (q0, q1, q2, q3) = (UnsafePointer(phases), UnsafePointer(phases + span),
                                UnsafePointer(phases + 2 * span), UnsafePointer(phases + 3 * span))
        for j in 0..<J {
            let plane = planes + j * planeStride
            for R in 0 ..< 4 * rows {
                let r = 4 * firstTileRow + R
                let c0 = c + (R & 3) * L + (j * rows + (R >> 2)) * TW, kStride = 4 * L
                guard r < H else {
                    for k in 0..<6 { (c0 + k * kStride).update(repeating: 0, count: TW) }
                    continue
                }
                padded.update(from: plane + r * W, count: W)
                deinterleave4(UnsafePointer(padded), blocks: span / 4, into: phases, stride: span)
                applyA(q0, q1, q2, q3, count: TW, into: c0, stride: kStride)
            }
        }
        for k in 0..<6 {
            let base = UnsafePointer(c + k * 4 * L)
            let (e0, e1, e2, e3) = (base, base + L, base + 2 * L, base + 3 * L)
            applyA(e0, e1, e2, e3, count: L, into: target + k * positionStride, stride: 6 * positionStride)
        }
    }

    /// `Aᵀ m A` of every tile of a segment (as in ``inputTransform(_:planeStride:planes:height:width:tileColumns:firstTileRow:tileRows:into:positionStride:scratch:)``):
    /// `m[ξ · positionStride + f]` → the 4×4 outputs at row `4a`, column `4b` of its plane
    /// (clipped at the plane's edge). Each step one loop over the segment's tiles: the six rows
    /// `i` of the tiles' `m` reduced to four columns `p_il = (m_i A)_l`, the four output rows
    /// `q_rl = (Aᵀ p_l)_r`, then each output row interleaved from its four column phases.
    /// `scratch` holds ``scratchElements(width:)``.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func outputTransform<Scalar: LayerScalar>(_ m: UnsafePointer<Scalar>, positionStride: Int, tileColumns TW: Int,
                                                     firstTileRow: Int, tileRows rows: Int,
                                                     into planes: UnsafeMutablePointer<Scalar>, planeStride: Int, planes J: Int,
                                                     height H: Int, width W: Int, scratch: UnsafeMutablePointer<Scalar>) {
        let L = J * rows * TW
        // p[i][l] (24 runs of L); q[r][l] (16)
        let p = scratch, q = scratch + 24 * L
        let fullQuads = W / 4
        for i in 0..<6 {
            // p_il = (m_i A)_l
            let m0 = m + (6 * i) * positionStride
            let (m1, m2, m3, m4, m5) = (m0 + positionStride, m0 + 2 * positionStride, m0 + 3 * positionStride,
                                        m0 + 4 * positionStride, m0 + 5 * positionStride)
            applyAT(m0, m1, m2, m3, m4, m5, count: L, into: p + (4 * i) * L, stride: L)
        }
        for l in 0..<4 {
            // q_rl = (Aᵀ p_l)_r over i
            let s0 = UnsafePointer(p + l * L), rowStep = 4 * L
            let (s1, s2, s3, s4, s5) = (s0 + rowStep, s0 + 2 * rowStep, s0 + 3 * rowStep, s0 + 4 * rowStep, s0 + 5 * rowStep)
            applyAT(s0, s1, s2, s3, s4, s5, count: L, into: q + l * L, stride: 4 * L)
        }
        for j in 0..<J {
            let plane = planes + j * planeStride
            for a in 0..<rows {
                for r in 0..<4 where 4 * (firstTileRow + a) + r < H {
                    let row = plane + (4 * (firstTileRow + a) + r) * W
                    let y0 = UnsafePointer(q + (4 * r) * L + (j * rows + a) * TW)
                    let (y1, y2, y3) = (y0 + L, y0 + 2 * L, y0 + 3 * L)
                    interleave4(y0, y1, y2, y3, quads: fullQuads, into: row)
                    for column in 4 * fullQuads ..< W {
                        row[column] = y0[(column - 4 * fullQuads) * L + fullQuads]
                    }
                }
            }
        }
    }

    /// `y_k[f] = (Bᵀ x[f])_k`, `k = 0 … 5`, for `f < count`, `y_k` at `y + k · stride`: the input
    /// transform's 1-D step, on a row's taps (columns) and on a tile row's six input rows.
    /// One output a loop, which the compiler vectorises (six outputs in one loop need more
    /// run-time alias checks than it makes).
    @inline(__always)
    static func applyBT<Scalar: LayerScalar>(_ x0: UnsafePointer<Scalar>, _ x1: UnsafePointer<Scalar>, _ x2: UnsafePointer<Scalar>,
                                             _ x3: UnsafePointer<Scalar>, _ x4: UnsafePointer<Scalar>, _ x5: UnsafePointer<Scalar>,
                                             count: Int, into y: UnsafeMutablePointer<Scalar>, stride: Int) {
        let (y0, y1, y2, y3, y4, y5) = (y, y + stride, y + 2 * stride, y + 3 * stride, y + 4 * stride, y + 5 * stride)
        for f in 0..<count { y0[f] = 4 * x0[f] - 5 * x2[f] + x4[f] }
        for f in 0..<count { y1[f] = x3[f] + x4[f] - 4 * (x1[f] + x2[f]) }
        for f in 0..<count { y2[f] = x4[f] - x3[f] + 4 * (x1[f] - x2[f]) }
        for f in 0..<count { y3[f] = x4[f] - x2[f] + 2 * (x3[f] - x1[f]) }
        for f in 0..<count { y4[f] = x4[f] - x2[f] + 2 * (x1[f] - x3[f]) }
        for f in 0..<count { y5[f] = 4 * x1[f] - 5 * x3[f] + x5[f] }
    }

    /// `y_k[f] = (A e[f])_k`, `k = 0 … 5`, for `f < count`, `y_k` at `y + k · stride`: the
    /// gradient transform's 1-D step (`e0`, `e0+e1+e2+e3`, `e0−e1+e2−e3`, `e0+2e1+4e2+8e3`,
    /// `e0−2e1+4e2−8e3`, `e3`), on a row's phases and on a tile row's four rows.
    @inline(__always)
    static func applyA<Scalar: LayerScalar>(_ e0: UnsafePointer<Scalar>, _ e1: UnsafePointer<Scalar>, _ e2: UnsafePointer<Scalar>,
                                            _ e3: UnsafePointer<Scalar>, count: Int, into y: UnsafeMutablePointer<Scalar>, stride: Int) {
        let (y0, y1, y2, y3, y4, y5) = (y, y + stride, y + 2 * stride, y + 3 * stride, y + 4 * stride, y + 5 * stride)
        y0.update(from: e0, count: count)
        for f in 0..<count { y1[f] = (e0[f] + e2[f]) + (e1[f] + e3[f]) }
        for f in 0..<count { y2[f] = (e0[f] + e2[f]) - (e1[f] + e3[f]) }
        for f in 0..<count { y3[f] = (e0[f] + 4 * e2[f]) + 2 * (e1[f] + 4 * e3[f]) }
        for f in 0..<count { y4[f] = (e0[f] + 4 * e2[f]) - 2 * (e1[f] + 4 * e3[f]) }
        y5.update(from: e3, count: count)
    }

    /// `y_l[f] = (Aᵀ m[f])_l`, `l = 0 … 3`, for `f < count`, `y_l` at `y + l · stride`: the
    /// output transform's 1-D step (`m0+m1+m2+m3+m4`, `m1−m2+2(m3−m4)`, `m1+m2+4(m3+m4)`,
    /// `m1−m2+8(m3−m4)+m5`), on each tile row's six `M` rows and then on their columns.
    @inline(__always)
    static func applyAT<Scalar: LayerScalar>(_ m0: UnsafePointer<Scalar>, _ m1: UnsafePointer<Scalar>, _ m2: UnsafePointer<Scalar>,
                                             _ m3: UnsafePointer<Scalar>, _ m4: UnsafePointer<Scalar>, _ m5: UnsafePointer<Scalar>,
                                             count: Int, into y: UnsafeMutablePointer<Scalar>, stride: Int) {
        let (y0, y1, y2, y3) = (y, y + stride, y + 2 * stride, y + 3 * stride)
        for f in 0..<count { y0[f] = m0[f] + (m1[f] + m2[f]) + (m3[f] + m4[f]) }
        for f in 0..<count { y1[f] = (m1[f] - m2[f]) + 2 * (m3[f] - m4[f]) }
        for f in 0..<count { y2[f] = (m1[f] + m2[f]) + 4 * (m3[f] + m4[f]) }
        for f in 0..<count { y3[f] = (m1[f] - m2[f]) + 8 * (m3[f] - m4[f]) + m5[f] }
    }

    /// `row[4b + l] = y_l[b]` for `b < quads`. In `Float`, four at a time through SIMD16's and
    /// SIMD8's `evenHalf` / `oddHalf` (shuffles).
    @inline(__always)
    static func interleave4<Scalar: LayerScalar>(_ y0: UnsafePointer<Scalar>, _ y1: UnsafePointer<Scalar>,
                                                 _ y2: UnsafePointer<Scalar>, _ y3: UnsafePointer<Scalar>,
                                                 quads: Int, into row: UnsafeMutablePointer<Scalar>) {
        var b = 0
        if Scalar.self == Float.self {
            let target = UnsafeMutableRawPointer(row)
            let sources = (UnsafeRawPointer(y0), UnsafeRawPointer(y1), UnsafeRawPointer(y2), UnsafeRawPointer(y3))
            while b + 4 <= quads {
                var even = SIMD8<Float>(), odd = SIMD8<Float>()
                even.evenHalf = sources.0.loadUnaligned(fromByteOffset: 4 * b, as: SIMD4<Float>.self)
                even.oddHalf = sources.2.loadUnaligned(fromByteOffset: 4 * b, as: SIMD4<Float>.self)
                odd.evenHalf = sources.1.loadUnaligned(fromByteOffset: 4 * b, as: SIMD4<Float>.self)
                odd.oddHalf = sources.3.loadUnaligned(fromByteOffset: 4 * b, as: SIMD4<Float>.self)
                var v = SIMD16<Float>()
                v.evenHalf = even
                v.oddHalf = odd
                target.storeBytes(of: v, toByteOffset: 16 * b, as: SIMD16<Float>.self)
                b += 4
            }
        }
        while b < quads {
            row[4 * b] = y0[b]
            row[4 * b + 1] = y1[b]
            row[4 * b + 2] = y2[b]
            row[4 * b + 3] = y3[b]
            b += 1
        }
    }
}
