import Tensor
import Communication

/// The sliced Epps–Pulley statistic against the standard normal, shared by SIGReg, LeJEPA and
/// the collapse diagnostics (Epps & Pulley 1983; Balestriero & LeCun, LeJEPA, 2025).
///
/// For projections `p = z·a` of the rows on `K` unit directions `a_k`, with the empirical
/// characteristic function `φ̂_k(t) = mean_i exp(i t p_ik)` and `φ(t) = exp(−t²/2)`:
///
///     eppsPulley = 1/K · Σ_k N · Σ_j w_j |φ̂_k(t_j) − φ(t_j)|²
///                = 1/K · Σ_k N · Σ_j w_j [(C̄_kj − φ(t_j))² + S̄_kj²]
///
/// with `C̄`, `S̄` the means of `cos(t_j p)`, `sin(t_j p)`, `t_j = j·Δt` at 17 knots in [0, 3],
/// and `w_j = φ(t_j)` times the trapezoid weights of the symmetric interval [−3, 3] folded onto
/// [0, 3]: `Δt` at the ends, `2Δt` inside. Only the sums of `cos(t_j p)` and `sin(t_j p)` are
/// all-reduced (`2·K·17` numbers); `cos(j·Δt·p)`, `sin(j·Δt·p)` follow from one `cos`/`sin`
/// of `Δt·p` by the angle-addition recurrence.
///
/// The gradient with respect to a projection is
/// `∂/∂p_ik = 2/K · Σ_j w_j t_j [S̄_kj cos(t_j p_ik) − (C̄_kj − φ(t_j)) sin(t_j p_ik)]`.
struct EppsPulley<Scalar: TensorScalar> {
    static var knotCount: Int { 17 }
    static var upperLimit: Double { 3 }

    /// The unit directions, `D × K`.
    let directions: Tensor<Scalar>
    let timeStep = EppsPulley.upperLimit / Double(EppsPulley.knotCount - 1)
    /// `φ(t_j) = exp(−t_j²/2)`.
    let normalCharacteristic: [Double]
    /// The quadrature weights times `φ(t_j)`.
    let weights: [Double]

    var directionCount: Int { directions.columnCount }
    /// The buffer elements of the sums: cos and sin per direction and knot.
    var sumCount: Int { EppsPulley.sumCount(directionCount: directionCount) }

    /// The buffer elements of the sums on `directionCount` directions.
    static func sumCount(directionCount: Int) -> Int { 2 * directionCount * knotCount }

    /// The buffers of projections and their gradients.
    let workspace: Workspace

    init(directions: Tensor<Scalar>, workspace: Workspace = Workspace()) {
        self.workspace = workspace
        self.directions = directions
        let dt = timeStep, knots = EppsPulley.knotCount
        var phi: [Double] = [], weights: [Double] = []
        for j in 0..<knots {
            let t = Double(j) * dt
            let trapezoid: Double = j == 0 || j == knots - 1 ? dt : 2 * dt
            phi.append(Double.exp(-t * t / 2))
            weights.append(trapezoid * phi[j])
        }
        normalCharacteristic = phi
        self.weights = weights
    }

    /// `K` unit directions in `D` dimensions drawn from `(seed, stream, step)`: the same on
    /// every rank without communication.
    ///
    /// The draws are single-precision normals (``CounterRandom/singlePrecisionNormals(start:into:)``,
    /// a quarter of the cost of double-precision ones: the `D·K` = 2 M draws of the default
    /// shape are redrawn every step), normalised in `Double`.
    static func randomDirections(dimension: Int, count: Int, seed: UInt64, streamName: String, step: Int,
                                 workspace: Workspace = Workspace()) -> Tensor<Scalar> {
        let draws: Tensor<Float> = workspace.tensor("eppsPulley.draws", [dimension * count], zeroed: false)
        draws.withUnsafeMutableBufferPointer {
            CounterRandom(seed: seed, streamName: streamName).substream(UInt64(truncatingIfNeeded: step))
                .singlePrecisionNormals(start: 0, into: $0)
        }
        let directions: Tensor<Scalar> = workspace.tensor("eppsPulley.directions", [dimension, count], zeroed: false)
        draws.withUnsafeBufferPointer { a in
            // Column norms accumulated row by row (each column's sum in row order, as a
            // column walk would, without striding over rows).
            var norms = [Double](repeating: 0, count: count)
            for i in 0..<dimension { for k in 0..<count { norms[k] += Double(a[i * count + k]) * Double(a[i * count + k]) } }
            let inverse = norms.map { 1 / $0.squareRoot() }
            directions.withUnsafeMutableBufferPointer { d in
                for i in 0..<dimension { for k in 0..<count { d[i * count + k] = Scalar(Double(a[i * count + k]) * inverse[k]) } }
            }
        }
        return directions
    }

    /// The projections `z·A` of rows on the directions, `n × K`, in the workspace's buffer
    /// `name`, `index` (one a view: valid until the next projection into the same buffer).
    func project(_ rows: Tensor<Scalar>, into name: String = "eppsPulley.projections", index: Int = 0) -> Tensor<Scalar> {
        let projections: Tensor<Scalar> = workspace.tensor(name, index: index,
                                                           [rows.rowCount, directionCount], zeroed: false)
        Tensor.gemm(rows, directions, into: projections)
        return projections
    }

    /// The lanes of ``forEachCharacteristic(_:_:)``: directions processed side by side.
    typealias Lanes = SIMD8<Double>

    /// Calls `body(i, k0, cosines, sines)` for every row `i` and every block of
    /// `Lanes.scalarCount` directions `k0 ..< k0 + 8`, with `cos(t_j p_ik)`, `sin(t_j p_ik)`
    /// of the block's directions side by side, knot after knot (`cosines[j]` holds the 8
    /// directions' values at knot `j`). Evaluated in `Double` by the angle-addition
    /// recurrence from one `cos`/`sin` of `Δt·p`; directions past `K` in the last block hold
    /// zero projections and are to be ignored.
    ///
    /// Eight directions at once turn the 16-step recurrence — a chain of dependent
    /// multiply-adds for one direction — into eight independent ones that vectorise; every lane
    /// does the same operations in the same order as one direction alone would.
    private func forEachCharacteristic(_ projections: Tensor<Scalar>,
                                       _ body: (Int, Int, UnsafeBufferPointer<Lanes>, UnsafeBufferPointer<Lanes>) -> Void) {
        let n = projections.rowCount, k = directionCount, knots = EppsPulley.knotCount, width = Lanes.scalarCount
        var cosines = [Lanes](repeating: .zero, count: knots), sines = cosines
        projections.withUnsafeBufferPointer { p in
            cosines.withUnsafeMutableBufferPointer { c in
                sines.withUnsafeMutableBufferPointer { s in
                    for i in 0..<n {
                        for k0 in stride(from: 0, to: k, by: width) {
                            var c1 = Lanes.zero, s1 = Lanes.zero
                            for lane in 0..<min(width, k - k0) {
                                let angle = timeStep * Double(p[i * k + k0 + lane])
                                c1[lane] = Double.cos(angle)
                                s1[lane] = Double.sin(angle)
                            }
                            c[0] = Lanes(repeating: 1)
                            s[0] = .zero
                            for j in 1..<knots {
                                c[j] = c[j - 1] * c1 - s[j - 1] * s1
                                s[j] = s[j - 1] * c1 + c[j - 1] * s1
                            }
                            body(i, k0, UnsafeBufferPointer(c), UnsafeBufferPointer(s))
                        }
                    }
                }
            }
        }
    }

    /// Writes `Σ_i cos(t_j p_ik)` and `Σ_i sin(t_j p_ik)` into `region` of `buffer`.
    func accumulate(_ projections: Tensor<Scalar>, into buffer: inout FusedStatistics<Scalar>, region: Range<Int>) {
        let knots = EppsPulley.knotCount, width = Lanes.scalarCount
        let blocks = (directionCount + width - 1) / width
        // Sums by [block][knot], lanes side by side, added row after row as one direction alone would.
        var cosineSums = [Lanes](repeating: .zero, count: blocks * knots), sineSums = cosineSums
        cosineSums.withUnsafeMutableBufferPointer { cs in
            sineSums.withUnsafeMutableBufferPointer { ss in
                forEachCharacteristic(projections) { _, k0, c, s in
                    let base = k0 / width * knots
                    for j in 0..<knots {
                        cs[base + j] += c[j]
                        ss[base + j] += s[j]
                    }
                }
            }
        }
        for k in 0..<directionCount {
            let base = region.lowerBound + 2 * k * knots, block = k / width * knots, lane = k % width
            for j in 0..<knots {
                buffer[base + j] = Scalar(cosineSums[block + j][lane])
                buffer[base + knots + j] = Scalar(sineSums[block + j][lane])
            }
        }
    }

    /// The regions of every view's sums in a fused buffer, and this rank's projections of each
    /// view (kept for the gradient): SIGReg's statistics, and LeJEPA's SIGReg term.
    struct ViewSums {
        let regions: [Range<Int>]
        let localProjections: [Tensor<Scalar>]
    }

    /// The statistic from the reduced sums of `globalBatchSize` rows.
    func statistic(_ buffer: FusedStatistics<Scalar>, region: Range<Int>, globalBatchSize: Int) -> Double {
        let knots = EppsPulley.knotCount, n = Double(globalBatchSize)
        var total = 0.0
        for k in 0..<directionCount {
            let base = region.lowerBound + 2 * k * knots
            for j in 0..<knots {
                let cosine = Double(buffer[base + j]) / n - normalCharacteristic[j]
                let sine = Double(buffer[base + knots + j]) / n
                total += weights[j] * (cosine * cosine + sine * sine)
            }
        }
        return n * total / Double(directionCount)
    }

    /// Adds `scale · ∂eppsPulley/∂rows` of this rank's rows (with projections `projections`)
    /// to `gradient`.
    func addGradient(rows projections: Tensor<Scalar>, _ buffer: FusedStatistics<Scalar>, region: Range<Int>,
                     globalBatchSize: Int, scale: Double, to gradient: Tensor<Scalar>) {
        let knots = EppsPulley.knotCount, n = Double(globalBatchSize), kCount = directionCount
        // ∂/∂p = Σ_j a_kj cos(t_j p) + b_kj sin(t_j p)
        var a = [Double](repeating: 0, count: kCount * knots), b = a
        for k in 0..<kCount {
            let base = region.lowerBound + 2 * k * knots
            for j in 0..<knots {
                let t = Double(j) * timeStep
                let meanCosine = Double(buffer[base + j]) / n, meanSine = Double(buffer[base + knots + j]) / n
                a[k * knots + j] = 2 * scale * weights[j] * t * meanSine / Double(kCount)
                b[k * knots + j] = -2 * scale * weights[j] * t * (meanCosine - normalCharacteristic[j]) / Double(kCount)
            }
        }
        // The coefficients by [block][knot], lanes side by side (directions past K: zero).
        let width = Lanes.scalarCount, blocks = (kCount + width - 1) / width
        var aLanes = [Lanes](repeating: .zero, count: blocks * knots), bLanes = aLanes
        for k in 0..<kCount {
            for j in 0..<knots {
                aLanes[k / width * knots + j][k % width] = a[k * knots + j]
                bLanes[k / width * knots + j][k % width] = b[k * knots + j]
            }
        }
        let projectionGradient: Tensor<Scalar> = workspace.tensor("eppsPulley.projectionGradient", projections.shape)
        projectionGradient.withUnsafeMutableBufferPointer { g in
            forEachCharacteristic(projections) { i, k0, c, s in
                let base = k0 / width * knots
                var sum = Lanes.zero
                for j in 1..<knots { sum += aLanes[base + j] * c[j] + bLanes[base + j] * s[j] }
                for lane in 0..<min(width, kCount - k0) { g[i * kCount + k0 + lane] = Scalar(sum[lane]) }
            }
        }
        Tensor.gemm(projectionGradient, directions, transposeB: true, into: gradient, beta: 1)
    }
}

/// The sliced statistic over the views of a global batch.
extension EppsPulley where Scalar: CommunicableScalar {
    /// Reserves the sums of every view of `batch` in `statistics` and writes those of its
    /// statistics rows (this rank's rows, or on the gather path every rank's).
    func accumulate(_ batch: GlobalBatch<Scalar>, into statistics: inout FusedStatistics<Scalar>) -> ViewSums {
        let regions = batch.localViews.map { _ in statistics.reserve(sumCount) }
        let localProjections = batch.localViews.enumerated().map { project($0.element, index: $0.offset) }
        for (v, region) in regions.enumerated() {
            let projections = batch.path == .gather
                ? project(batch.statisticsViews[v], into: "eppsPulley.gatheredProjections", index: v) : localProjections[v]
            accumulate(projections, into: &statistics, region: region)
        }
        return ViewSums(regions: regions, localProjections: localProjections)
    }

    /// The statistic of each view from the reduced sums, averaged over the views.
    func meanStatistic(_ sums: ViewSums, _ statistics: FusedStatistics<Scalar>, globalBatchSize: Int) -> Double {
        sums.regions.map { statistic(statistics, region: $0, globalBatchSize: globalBatchSize) }.reduce(0, +)
            / Double(sums.regions.count)
    }

    /// Adds `weight ·` the gradient of ``meanStatistic(_:_:globalBatchSize:)`` with respect to
    /// this rank's rows of each view to `gradients`.
    func addGradients(_ sums: ViewSums, _ statistics: FusedStatistics<Scalar>, globalBatchSize: Int, weight: Double,
                      to gradients: [Tensor<Scalar>]) {
        for (v, region) in sums.regions.enumerated() {
            addGradient(rows: sums.localProjections[v], statistics, region: region, globalBatchSize: globalBatchSize,
                        scale: weight / Double(sums.regions.count), to: gradients[v])
        }
    }
}
