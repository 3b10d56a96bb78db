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
    /// Eight filters `(r, s … s + 7)` a vector, so that each position's eight results are one
    /// store into `U[ξ][r]` (the scalar loop stored 36 values `R · S` apart per filter, and took
    /// 4 % of the ResNet step).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func transformFilters<Scalar: LayerScalar>(_ w: UnsafePointer<Scalar>, outChannels OC: Int, inChannels C: Int,
                                                      flipped: Bool, into u: UnsafeMutablePointer<Scalar>) {
        let (R, S) = flipped ? (C, OC) : (OC, C)
        // filter (r, s) at w + (r · C + s) · 9, or flipped (s · C + r) · 9
        let laneStride = flipped ? 9 * C : 9
        parallelRanges(R, minimumPerPart: 16) { rows in
            withUnsafeTemporaryAllocation(of: Scalar.self, capacity: 2 * positions * lanes) { buffer in
                let taps = buffer.baseAddress!, staging = taps + positions * lanes
                for r in rows {
                    let filters = w + (flipped ? r : r * C) * 9
                    for s in Swift.stride(from: 0, to: S, by: lanes) {
                        let J = min(lanes, S - s)
                        // taps[3i + j][lane] = g[i][j] of filter (r, s + lane), rotated when flipped
                        for lane in 0..<lanes {
                            let f = filters + (s + min(lane, J - 1)) * laneStride
                            for tap in 0..<9 { taps[tap * lanes + lane] = f[flipped ? 8 - tap : tap] }
                        }
                        @inline(__always) func g(_ i: Int, _ j: Int) -> Lanes<Scalar> { load(taps + (3 * i + j) * lanes) }
                        // (G g) column j, then U = (G g) Gᵀ row i: position 6i + k
                        let c0 = filterColumn(g(0, 0), g(1, 0), g(2, 0))
                        let c1 = filterColumn(g(0, 1), g(1, 1), g(2, 1))
                        let c2 = filterColumn(g(0, 2), g(1, 2), g(2, 2))
                        storePositions(lanes: J, into: u + r * S + s, positionStride: R * S, staging: staging) { target, step in
                            @inline(__always) func row(_ i: Int, _ a: Lanes<Scalar>, _ b: Lanes<Scalar>, _ c: Lanes<Scalar>) {
                                store(filterColumn(a, b, c), target + 6 * i * step, step: step)
                            }
                            row(0, c0.0, c1.0, c2.0); row(1, c0.1, c1.1, c2.1); row(2, c0.2, c1.2, c2.2)
                            row(3, c0.3, c1.3, c2.3); row(4, c0.4, c1.4, c2.4); row(5, c0.5, c1.5, c2.5)
                        }
                    }
                }
            }
        }
    }

    /// `(G x)_0 … (G x)_5` of eight columns `x` of three, one a lane: `x0/4`, `−(x0+x1+x2)/6`,
    /// `−(x0−x1+x2)/6`, `x0/24 + x1/12 + x2/6`, `x0/24 − x1/12 + x2/6`, `x2`.
    @inline(__always)
    static func filterColumn<Scalar: LayerScalar>(_ x0: Lanes<Scalar>, _ x1: Lanes<Scalar>, _ x2: Lanes<Scalar>)
        -> (Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>) {
        let four: Scalar = 4, six: Scalar = 6, twelve: Scalar = 12, twentyFour: Scalar = 24
        let sum = x0 + x2
        let y1 = -(sum + x1) / six, y2 = -(sum - x1) / six
        let (p0, p1, p2) = (x0 / twentyFour, x1 / twelve, x2 / six)
        return (x0 / four, y1, y2, p0 + p1 + p2, p0 - p1 + p2, x2)
    }

    /// The elements of the scratch `V` and `M` a chunk of images aims at (4 MiB of `Float`
    /// each): both stay in the caches between the transforms and the 36 products, which
    /// still get hundreds of columns. On the ResNet step of docs/PERFORMANCE.md (2 threads,
    /// 512 KiB L2 a core, 32 MiB L3) 2²⁰ gave the shortest step in alternating runs (1,666 and
    /// 1,556 ms against 1,730 and 1,799 at 2¹⁹ and 1,965 and 1,674 at 2²¹); F(2×2, 3×3)'s
    /// 16 MiB went through memory and was ~20 % slower than 2 MiB.
    static let chunkElements = 1 << 20

    /// The images a transform takes at once, one in each lane of a `SIMD8`: every step of a
    /// transform is the same arithmetic for eight images' tiles, so the transforms run in
    /// 8-wide vectors whatever the plane's size (a ResNet's last stage has one tile a plane).
    static let lanes = 8

    /// The elements of a transform's lane-interleaved copy of its band of rows it aims at
    /// (64 KiB of `Float`: in the L1 and L2 caches while the band's tiles are transformed).
    static let bandElements = 1 << 14

    /// Tile rows a transform takes at once: all of the plane's when its band fits
    /// ``bandElements``, else as many as fit (at least one).
    static func bandRows(tileRows TH: Int, tileColumns TW: Int) -> Int {
        let rowElements = (4 * TW + 2) * lanes
        return max(1, min(TH, (bandElements / rowElements - 2) / 4))
    }

    /// The scratch of one transform of a band of `rows` tile rows of `TW` tiles (the largest of
    /// the input, gradient and output transforms'): the band's rows lane-interleaved, one
    /// tile's 36 intermediate vectors, and the 36 vectors of ``storePositions(lanes:into:positionStride:staging:_:)``'s staging.
    static func scratchElements(tileRows rows: Int, tileColumns TW: Int) -> Int {
        (4 * rows + 2) * (4 * TW + 2) * lanes + 2 * positions * lanes
    }

    /// Runs `body(channel, firstImage, lanes, firstTileRow, tileRows, scratch)` for every
    /// segment of a transform, over the threads: a channel of up to ``lanes`` consecutive
    /// images (`lanes` of them), a band of ``bandRows(tileRows:tileColumns:)`` tile rows.
    @inline(__always)
    static func forEachSegment<Scalar: LayerScalar>(
        channels: Int, images: Int, tileRows TH: Int, tileColumns TW: Int, of _: Scalar.Type,
        _ body: (_ channel: Int, _ firstImage: Int, _ lanes: Int, _ firstTileRow: Int, _ tileRows: Int,
                 _ scratch: UnsafeMutablePointer<Scalar>) -> Void) {
        let rows = bandRows(tileRows: TH, tileColumns: TW)
        let groups = (images + lanes - 1) / lanes, bands = (TH + rows - 1) / rows
        let scratchCount = scratchElements(tileRows: rows, tileColumns: TW)
        parallelRanges(channels * groups * bands, minimumPerPart: 1) { segments in
            withUnsafeTemporaryAllocation(of: Scalar.self, capacity: scratchCount) { scratch in
                for segment in segments {
                    let (channel, rest) = segment.quotientAndRemainder(dividingBy: groups * bands)
                    let (group, band) = rest.quotientAndRemainder(dividingBy: bands)
                    let (firstImage, firstRow) = (group * lanes, band * rows)
                    body(channel, firstImage, min(lanes, images - firstImage), firstRow, min(rows, TH - firstRow),
                         scratch.baseAddress!)
                }
            }
        }
    }

    /// Elements between the 36 positions' matrices beyond `C · n` (see ``convolve(_:batch:inChannels:outChannels:height:width:filters:output:v:m:imagesPerChunk:)``);
    /// also the room an 8-wide load of a chunk's last columns may read past them.
    static let positionPadding = 64

    /// The elements `V` `(36, C, n)` or `M` `(36, OC, n)` takes with `channels` = C or OC.
    static func scratchCount(channels: Int, columns: Int) -> Int { positions * (channels * columns + positionPadding) }

    /// Images per chunk (a multiple of ``lanes`` when more than one group fits) and the
    /// columns `n = images · tiles` of `V` `(36, C, n)` and `M` `(36, OC, n)`.
    static func chunk(batch: Int, inChannels C: Int, outChannels OC: Int, height H: Int, width W: Int,
                      chunkElements: Int = chunkElements) -> (images: Int, columns: Int) {
        let (TH, TW) = tileGrid(height: H, width: W)
        let tiles = TH * TW
        var images = max(1, min(batch, chunkElements / max(positions * max(C, OC) * tiles, 1)))
        if images > lanes && images < batch { images -= images % lanes }
        return (images, images * tiles)
    }

    /// `y (B, OC, H, W) = conv3×3(x (B, C, H, W))`, stride 1, padding 1, with the transformed
    /// filters `u` `(36, OC, C)`; overwrites `y`. `v` and `m` are scratch of at least
    /// ``scratchCount(channels:columns:)`` elements (of C and OC), `n = images · tiles` (``chunk(batch:inChannels:outChannels:height:width:chunkElements:)``).
    ///
    /// A chunk's columns are tile-major: tile `t` of image `j` of the chunk is column
    /// `t · images + j`, so the eight images of a transform's lanes are eight adjacent columns.
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
        for first in Swift.stride(from: 0, to: B, by: imagesPerChunk) {
            let images = min(imagesPerChunk, B - first), columns = images * tiles
            // V[ξ][c][t · images + j] = (Bᵀ d B)[ξ] of tile t of channel c of image first + j
            forEachSegment(channels: C, images: images, tileRows: TH, tileColumns: TW, of: Scalar.self) { c, j, lanes, a, rows, scratch in
                inputTransform(x + ((first + j) * C + c) * H * W, planeStride: C * H * W, lanes: lanes,
                               height: H, width: W, firstTileRow: a, tileRows: rows,
                               into: v + c * n + j, tileStride: images, positionStride: vStride, scratch: scratch)
            }
            // M[ξ] = U[ξ] · V[ξ]                 (OC, columns) = (OC, C) (C, columns)
            parallelProducts(positions) { xi in
                Scalar.gemm(transposeA: false, transposeB: false, m: OC, n: columns, k: C,
                            alpha: 1, a: u + xi * OC * C, lda: C, b: UnsafePointer(v + xi * vStride), ldb: n,
                            beta: 0, c: m + xi * mStride, ldc: n)
            }
            // y[first + j][o] = Aᵀ M A of each tile
            forEachSegment(channels: OC, images: images, tileRows: TH, tileColumns: TW, of: Scalar.self) { o, j, lanes, a, rows, scratch in
                outputTransform(UnsafePointer(m + o * n + j), tileStride: images, positionStride: mStride,
                                firstTileRow: a, tileRows: rows, into: y + ((first + j) * OC + o) * H * W,
                                planeStride: OC * H * W, lanes: lanes, height: H, width: W, scratch: scratch)
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
        du.update(repeating: 0, count: positions * OC * C)
        for first in Swift.stride(from: 0, to: B, by: imagesPerChunk) {
            let images = min(imagesPerChunk, B - first), columns = images * tiles
            // V[ξ][c][t · images + j] = (Bᵀ d B)[ξ];  M[ξ][o][t · images + j] = (A dY Aᵀ)[ξ]
            forEachSegment(channels: C + OC, images: images, tileRows: TH, tileColumns: TW, of: Scalar.self) { channel, j, lanes, a, rows, scratch in
                if channel < C {
                    inputTransform(x + ((first + j) * C + channel) * H * W, planeStride: C * H * W, lanes: lanes,
                                   height: H, width: W, firstTileRow: a, tileRows: rows,
                                   into: v + channel * n + j, tileStride: images, positionStride: vStride, scratch: scratch)
                } else {
                    let o = channel - C
                    gradientTransform(dy + ((first + j) * OC + o) * H * W, planeStride: OC * H * W, lanes: lanes,
                                      height: H, width: W, firstTileRow: a, tileRows: rows,
                                      into: m + o * n + j, tileStride: images, positionStride: mStride, scratch: scratch)
                }
            }
            // dU[ξ] += M[ξ] · V[ξ]ᵀ              (OC, C) += (OC, columns) (C, columns)ᵀ
            parallelProducts(positions) { xi in
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

    // MARK: Transforms, eight images a vector

    typealias Lanes<Scalar: LayerScalar> = SIMD8<Scalar>

    /// Eight consecutive values, unaligned (also the `Float` activations' loads and stores).
    @inline(__always)
    static func load<Scalar: LayerScalar>(_ p: UnsafePointer<Scalar>) -> Lanes<Scalar> {
        UnsafeRawPointer(p).loadUnaligned(as: Lanes<Scalar>.self)
    }

    @inline(__always)
    static func store<Scalar: LayerScalar>(_ value: Lanes<Scalar>, _ p: UnsafeMutablePointer<Scalar>) {
        UnsafeMutableRawPointer(p).storeBytes(of: value, as: Lanes<Scalar>.self)
    }

    /// Stores the six vectors of `y` at `p`, `p + step`, … `p + 5 · step`.
    @inline(__always)
    static func store<Scalar: LayerScalar>(
        _ y: (Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>),
        _ p: UnsafeMutablePointer<Scalar>, step: Int) {
        store(y.0, p); store(y.1, p + step); store(y.2, p + 2 * step)
        store(y.3, p + 3 * step); store(y.4, p + 4 * step); store(y.5, p + 5 * step)
    }

    /// Runs `columns(target, positionStride)`, which writes position `ξ` of a tile's eight
    /// lanes to `target + ξ · positionStride` with whole-vector stores, straight into `target`
    /// when all `lanes` lanes are images, else into `staging` (`36 · 8`) and then the first
    /// `lanes` lanes of each position to `target` (no lane of another tile overwritten).
    @inline(__always)
    static func storePositions<Scalar: LayerScalar>(lanes J: Int, into target: UnsafeMutablePointer<Scalar>,
                                                    positionStride: Int, staging: UnsafeMutablePointer<Scalar>,
                                                    _ columns: (UnsafeMutablePointer<Scalar>, Int) -> Void) {
        if J == lanes {
            columns(target, positionStride)
            return
        }
        columns(staging, lanes)
        for xi in 0..<positions {
            (target + xi * positionStride).update(from: staging + xi * lanes, count: J)
        }
    }

    /// `Bᵀ x` of a column `x` of six: `4x0 − 5x2 + x4`, `x3 + x4 − 4(x1 + x2)`,
    /// `x4 − x3 + 4(x1 − x2)`, `x4 − x2 + 2(x3 − x1)`, `x4 − x2 + 2(x1 − x3)`, `4x1 − 5x3 + x5`.
    @inline(__always)
    static func bt<Scalar: LayerScalar>(_ x0: Lanes<Scalar>, _ x1: Lanes<Scalar>, _ x2: Lanes<Scalar>,
                                        _ x3: Lanes<Scalar>, _ x4: Lanes<Scalar>, _ x5: Lanes<Scalar>)
        -> (Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>) {
        let four: Scalar = 4, five: Scalar = 5, two: Scalar = 2
        let s12 = x1 + x2, d12 = x1 - x2, s42 = x4 - x2, d31 = two * (x3 - x1)
        let y0 = four * x0 - five * x2 + x4
        let y1 = (x3 + x4) - four * s12
        let y2 = (x4 - x3) + four * d12
        let y5 = four * x1 - five * x3 + x5
        return (y0, y1, y2, s42 + d31, s42 - d31, y5)
    }

    /// `A e` of a column `e` of four: `e0`, `e0+e1+e2+e3`, `e0−e1+e2−e3`, `e0+2e1+4e2+8e3`,
    /// `e0−2e1+4e2−8e3`, `e3`.
    @inline(__always)
    static func a<Scalar: LayerScalar>(_ e0: Lanes<Scalar>, _ e1: Lanes<Scalar>, _ e2: Lanes<Scalar>, _ e3: Lanes<Scalar>)
        -> (Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>) {
        let four: Scalar = 4, two: Scalar = 2
        let s02 = e0 + e2, s13 = e1 + e3, t02 = e0 + four * e2, t13 = two * (e1 + four * e3)
        return (e0, s02 + s13, s02 - s13, t02 + t13, t02 - t13, e3)
    }

    /// `Aᵀ m` of a column `m` of six: `m0+m1+m2+m3+m4`, `m1−m2+2(m3−m4)`, `m1+m2+4(m3+m4)`,
    /// `m1−m2+8(m3−m4)+m5`.
    @inline(__always)
    static func at<Scalar: LayerScalar>(_ m0: Lanes<Scalar>, _ m1: Lanes<Scalar>, _ m2: Lanes<Scalar>,
                                        _ m3: Lanes<Scalar>, _ m4: Lanes<Scalar>, _ m5: Lanes<Scalar>)
        -> (Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>) {
        let two: Scalar = 2, four: Scalar = 4, eight: Scalar = 8
        let s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4
        let y0 = m0 + s12 + s34
        let y3 = d12 + eight * d34 + m5
        return (y0, d12 + two * d34, s12 + four * s34, y3)
    }

    /// The 8×8 transpose of `v` (row `i` = `v.i`): three perfect unshuffles of the 64
    /// elements (each moves an index's lowest bit to its top, so three swap row and column).
    @inline(__always)
    static func transpose<Scalar: LayerScalar>(
        _ v: (Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>)
    ) -> (Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>) {
        @inline(__always)
        func unshuffle(_ v: (Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>))
            -> (Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>, Lanes<Scalar>) {
            let (p0, p1) = (SIMD16(lowHalf: v.0, highHalf: v.1), SIMD16(lowHalf: v.2, highHalf: v.3))
            let (p2, p3) = (SIMD16(lowHalf: v.4, highHalf: v.5), SIMD16(lowHalf: v.6, highHalf: v.7))
            return (p0.evenHalf, p1.evenHalf, p2.evenHalf, p3.evenHalf, p0.oddHalf, p1.oddHalf, p2.oddHalf, p3.oddHalf)
        }
        return unshuffle(unshuffle(unshuffle(v)))
    }

    /// `target[8c + j] = row_j[c]` for `c < count`, `row_j = source + j · laneStride` for the
    /// first `lanes` lanes, zero in the others: rows of `lanes` planes interleaved into lanes
    /// (eight columns at a time by ``transpose(_:)`` when all eight lanes are planes).
    @inline(__always)
    static func interleave<Scalar: LayerScalar>(_ source: UnsafePointer<Scalar>, laneStride: Int, lanes J: Int, count: Int,
                                                into target: UnsafeMutablePointer<Scalar>) {
        var c = 0
        if J == lanes {
            while c + 8 <= count {
                let s = source + c
                let rows = (load(s), load(s + laneStride), load(s + 2 * laneStride), load(s + 3 * laneStride),
                            load(s + 4 * laneStride), load(s + 5 * laneStride), load(s + 6 * laneStride), load(s + 7 * laneStride))
                let columns = transpose(rows)
                let t = target + 8 * c
                store(columns.0, t); store(columns.1, t + 8); store(columns.2, t + 16); store(columns.3, t + 24)
                store(columns.4, t + 32); store(columns.5, t + 40); store(columns.6, t + 48); store(columns.7, t + 56)
                c += 8
            }
        }
        while c < count {
            var column = Lanes<Scalar>()
            for j in 0..<J { column[j] = source[j * laneStride + c] }
            store(column, target + 8 * c)
            c += 1
        }
    }

    /// `row_j[c] = source[8c + j]` for `c < count` and the first `lanes` lanes, `row_j = target +
    /// j · laneStride`: the inverse of ``interleave(_:laneStride:lanes:count:into:)``.
    @inline(__always)
    static func deinterleave<Scalar: LayerScalar>(_ source: UnsafePointer<Scalar>, count: Int, lanes J: Int,
                                                  into target: UnsafeMutablePointer<Scalar>, laneStride: Int) {
        var c = 0
        if J == lanes {
            while c + 8 <= count {
                let s = source + 8 * c
                let columns = (load(s), load(s + 8), load(s + 16), load(s + 24), load(s + 32), load(s + 40), load(s + 48), load(s + 56))
                let rows = transpose(columns)
                let t = target + c
                store(rows.0, t); store(rows.1, t + laneStride); store(rows.2, t + 2 * laneStride)
                store(rows.3, t + 3 * laneStride); store(rows.4, t + 4 * laneStride); store(rows.5, t + 5 * laneStride)
                store(rows.6, t + 6 * laneStride); store(rows.7, t + 7 * laneStride)
                c += 8
            }
        }
        while c < count {
            for j in 0..<J { target[j * laneStride + c] = source[8 * c + j] }
            c += 1
        }
    }

    /// `Bᵀ d B` of every 6×6 tile of tile rows `firstTileRow ..< firstTileRow + rows` of `lanes`
    /// planes `planeStride` apart, one plane a lane (padding 1: the tile of output tile `(a, b)`
    /// starts at input row `4a − 1`, column `4b − 1`): position `ξ` of tile `t` of plane `j` goes
    /// to `target[ξ · positionStride + t · tileStride + j]`.
    ///
    /// The band's input rows, zero-padded, are interleaved into `scratch` (`T[R][cc][lane]`,
    /// `4 · rows + 2` rows of `4 · TW + 2` columns); then per tile `d B` row by row and `Bᵀ (d B)`
    /// column by column, each step one `SIMD8` expression. `scratch` holds
    /// ``scratchElements(tileRows:tileColumns:)``.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func inputTransform<Scalar: LayerScalar>(_ planes: UnsafePointer<Scalar>, planeStride: Int, lanes J: Int,
                                                    height H: Int, width W: Int, firstTileRow: Int, tileRows rows: Int,
                                                    into target: UnsafeMutablePointer<Scalar>, tileStride: Int,
                                                    positionStride: Int, scratch: UnsafeMutablePointer<Scalar>) {
        let TW = (W + 3) / 4, rowLength = (4 * TW + 2) * lanes
        let band = scratch, tile = scratch + (4 * rows + 2) * rowLength, staging = tile + positions * lanes
        for R in 0 ..< 4 * rows + 2 {
            let r = 4 * firstTileRow - 1 + R, row = band + R * rowLength
            guard r >= 0 && r < H else {
                row.update(repeating: 0, count: rowLength)
                continue
            }
            row.update(repeating: 0, count: lanes)
            interleave(planes + r * W, laneStride: planeStride, lanes: J, count: W, into: row + lanes)
            (row + (W + 1) * lanes).update(repeating: 0, count: rowLength - (W + 1) * lanes)
        }
        for a in 0..<rows {
            for b in 0..<TW {
                // (d B) of the tile's six rows
                for s in 0..<6 {
                    let x = UnsafePointer(band + (4 * a + s) * rowLength + 4 * b * lanes)
                    store(bt(load(x), load(x + 8), load(x + 16), load(x + 24), load(x + 32), load(x + 40)),
                          tile + 6 * s * lanes, step: lanes)
                }
                // Bᵀ (d B), column k: position 6i + k
                let column = target + ((firstTileRow + a) * TW + b) * tileStride
                storePositions(lanes: J, into: column, positionStride: positionStride, staging: staging) { column, positionStride in
                    for k in 0..<6 {
                        let x = UnsafePointer(tile + k * lanes)
                        store(bt(load(x), load(x + 48), load(x + 96), load(x + 144), load(x + 192), load(x + 240)),
                              column + k * positionStride, step: 6 * positionStride)
                    }
                }
            }
        }
    }

    /// `A e Aᵀ` of every 4×4 output-gradient tile `e` of a band (as in
    /// ``inputTransform(_:planeStride:lanes:height:width:firstTileRow:tileRows:into:tileStride:positionStride:scratch:)``;
    /// zero beyond the plane's edge): position `ξ = 6i + k` of tile `t` of plane `j` to
    /// `target[ξ · positionStride + t · tileStride + j]`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func gradientTransform<Scalar: LayerScalar>(_ planes: UnsafePointer<Scalar>, planeStride: Int, lanes J: Int,
                                                       height H: Int, width W: Int, firstTileRow: Int, tileRows rows: Int,
                                                       into target: UnsafeMutablePointer<Scalar>, tileStride: Int,
                                                       positionStride: Int, scratch: UnsafeMutablePointer<Scalar>) {
        let TW = (W + 3) / 4, rowLength = 4 * TW * lanes
        let band = scratch, tile = scratch + 4 * rows * rowLength, staging = tile + positions * lanes
        for R in 0 ..< 4 * rows {
            let r = 4 * firstTileRow + R, row = band + R * rowLength
            guard r < H else {
                row.update(repeating: 0, count: rowLength)
                continue
            }
            interleave(planes + r * W, laneStride: planeStride, lanes: J, count: W, into: row)
            (row + W * lanes).update(repeating: 0, count: rowLength - W * lanes)
        }
        for a in 0..<rows {
            for b in 0..<TW {
                // (e Aᵀ) of the tile's four rows
                for s in 0..<4 {
                    let x = UnsafePointer(band + (4 * a + s) * rowLength + 4 * b * lanes)
                    store(Winograd.a(load(x), load(x + 8), load(x + 16), load(x + 24)), tile + 6 * s * lanes, step: lanes)
                }
                // A (e Aᵀ), column k: position 6i + k
                let column = target + ((firstTileRow + a) * TW + b) * tileStride
                storePositions(lanes: J, into: column, positionStride: positionStride, staging: staging) { column, positionStride in
                    for k in 0..<6 {
                        let x = UnsafePointer(tile + k * lanes)
                        store(Winograd.a(load(x), load(x + 48), load(x + 96), load(x + 144)),
                              column + k * positionStride, step: 6 * positionStride)
                    }
                }
            }
        }
    }

    /// `Aᵀ m A` of every tile of a band: `m[ξ · positionStride + t · tileStride + j]` → the 4×4
    /// outputs at row `4a`, column `4b` of plane `j` (clipped at the plane's edge). Per tile
    /// `m A` row by row and `Aᵀ (m A)` column by column into `scratch` (the band's outputs,
    /// lane-interleaved), then each output row back to its `lanes` planes. `m` may be read up
    /// to seven elements past a segment's last column (``positionPadding``); those lanes are
    /// never stored.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    static func outputTransform<Scalar: LayerScalar>(_ m: UnsafePointer<Scalar>, tileStride: Int, positionStride: Int,
                                                     firstTileRow: Int, tileRows rows: Int,
                                                     into planes: UnsafeMutablePointer<Scalar>, planeStride: Int, lanes J: Int,
                                                     height H: Int, width W: Int, scratch: UnsafeMutablePointer<Scalar>) {
        let TW = (W + 3) / 4, rowLength = 4 * TW * lanes
        let band = scratch, tile = scratch + 4 * rows * rowLength
        for a in 0..<rows {
            for b in 0..<TW {
                // (m A) of the tile's six rows: tile[i][l]
                let column = m + ((firstTileRow + a) * TW + b) * tileStride
                for i in 0..<6 {
                    let x = column + 6 * i * positionStride
                    let y = at(load(x), load(x + positionStride), load(x + 2 * positionStride), load(x + 3 * positionStride),
                               load(x + 4 * positionStride), load(x + 5 * positionStride))
                    let t = tile + 4 * i * lanes
                    store(y.0, t); store(y.1, t + 8); store(y.2, t + 16); store(y.3, t + 24)
                }
                // Aᵀ (m A), column l: output row r, column l of the tile
                for l in 0..<4 {
                    let x = UnsafePointer(tile + l * lanes)
                    let y = at(load(x), load(x + 32), load(x + 64), load(x + 96), load(x + 128), load(x + 160))
                    let t = band + (4 * a * rowLength) + (4 * b + l) * lanes
                    store(y.0, t); store(y.1, t + rowLength); store(y.2, t + 2 * rowLength); store(y.3, t + 3 * rowLength)
                }
            }
        }
        for R in 0 ..< 4 * rows where 4 * firstTileRow + R < H {
            deinterleave(UnsafePointer(band + R * rowLength), count: W, lanes: J,
                         into: planes + (4 * firstTileRow + R) * W, laneStride: planeStride)
        }
    }
}
