import Communication
import Datasets
import Tensor

/// The weighted k-nearest-neighbour classifier of DINO (Caron et al., 2021) and solo-learn.
///
/// Features are L2-normalised, so the similarity of a query `q` and a bank row `b` is the
/// cosine `s = q·b`. Each query takes its `k` most similar bank rows; each votes for its label
/// with weight `exp(s / T)`; the prediction is the class with the largest summed weight (the
/// smallest class index on a tie). The training features are the bank, the test features the
/// queries.
///
/// The similarities are computed with BLAS `gemm` a block of queries at a time
/// (`block × bankRows`), so memory stays bounded whatever the number of queries.
public struct NearestNeighborClassifier: Sendable, Equatable {
    /// Neighbours that vote (default 20).
    public var k: Int
    /// The temperature `T` of the votes' weights `exp(s / T)` (default 0.07).
    public var temperature: Double
    /// The largest number of similarities computed at once (default 8 Mi, 32 MiB in `Float`).
    public var blockElements: Int

    /// - Throws: ``EvaluationError`` for `k < 1` or a temperature that is not positive.
    public init(k: Int = 20, temperature: Double = 0.07, blockElements: Int = 8 << 20) throws {
        guard k >= 1 else { throw EvaluationError("k-NN: k must be at least 1, got \(k)") }
        guard temperature > 0, temperature.isFinite else {
            throw EvaluationError("k-NN: the temperature must be positive, got \(temperature)")
        }
        self.k = k
        self.temperature = temperature
        self.blockElements = max(1, blockElements)
    }

    /// Rows scaled to unit L2 norm (a zero row stays zero), in a new tensor.
    public static func normalizedRows<Scalar: TensorScalar>(_ features: Tensor<Scalar>) -> Tensor<Scalar> {
        let result = features.copy()
        let d = result.columnCount
        result.withUnsafeMutableBufferPointer { p in
            for i in 0..<result.rowCount {
                var norm = 0.0
                for j in 0..<d { norm += Double(p[i * d + j]) * Double(p[i * d + j]) }
                let scale = norm > 0 ? Scalar(1 / norm.squareRoot()) : 0
                for j in 0..<d { p[i * d + j] *= scale }
            }
        }
        return result
    }

    /// The predicted class of every query row.
    ///
    /// - Parameters:
    ///   - queries: `queries × D` features (not yet normalised).
    ///   - bank: `bankRows × D` features (not yet normalised).
    ///   - bankLabels: the bank's labels, in `0 ..< classCount`.
    ///   - classCount: the number of classes.
    public func predict<Scalar: TensorScalar>(_ queries: Tensor<Scalar>, bank: Tensor<Scalar>, bankLabels: [Int64],
                                              classCount: Int) throws -> [Int64] {
        guard queries.columnCount == bank.columnCount else {
            throw EvaluationError("k-NN: queries have \(queries.columnCount) features, the bank \(bank.columnCount)")
        }
        guard bankLabels.count == bank.rowCount else {
            throw EvaluationError("k-NN: \(bank.rowCount) bank rows but \(bankLabels.count) labels")
        }
        guard bank.rowCount > 0 else { throw EvaluationError("k-NN: the bank is empty") }
        if let bad = bankLabels.first(where: { $0 < 0 || $0 >= classCount }) {
            throw EvaluationError("k-NN: bank label \(bad) is outside 0..<\(classCount)")
        }
        let q = Self.normalizedRows(queries), b = Self.normalizedRows(bank)
        let n = b.rowCount, neighbours = min(k, n)
        let block = max(1, min(q.rowCount, blockElements / n))
        let similarities = Tensor<Scalar>(zeros: [block, n])
        var predictions: [Int64] = []
        predictions.reserveCapacity(q.rowCount)
        var topSimilarity = [Double](repeating: 0, count: neighbours)
        var topIndex = [Int](repeating: 0, count: neighbours)
        var votes = [Double](repeating: 0, count: classCount)
        var start = 0
        while start < q.rowCount {
            let end = min(start + block, q.rowCount)
            let s = similarities.rows(0..<(end - start))
            // S = Q Bᵀ                                       (block, n) = (block, D) (n, D)ᵀ
            Tensor.gemm(q.rows(start..<end), b, transposeB: true, into: s)
            s.withUnsafeBufferPointer { p in
                for row in 0..<(end - start) {
                    // The top `neighbours` by similarity, kept sorted in descending order; among
                    // equal similarities the lower bank index ranks first.
                    var filled = 0
                    for j in 0..<n {
                        let value = Double(p[row * n + j])
                        if filled == neighbours && value <= topSimilarity[neighbours - 1] { continue }
                        var position = filled < neighbours ? filled : neighbours - 1
                        while position > 0 && topSimilarity[position - 1] < value {
                            topSimilarity[position] = topSimilarity[position - 1]
                            topIndex[position] = topIndex[position - 1]
                            position -= 1
                        }
                        topSimilarity[position] = value
                        topIndex[position] = j
                        if filled < neighbours { filled += 1 }
                    }
                    for c in votes.indices { votes[c] = 0 }
                    for i in 0..<filled {
                        votes[Int(bankLabels[topIndex[i]])] += Double.exp(topSimilarity[i] / temperature)
                    }
                    var best = 0
                    for c in votes.indices where votes[c] > votes[best] { best = c }
                    predictions.append(Int64(best))
                }
            }
            start = end
        }
        return predictions
    }

    /// The top-1 accuracy on `queries`: with several ranks each classifies a contiguous part of
    /// the queries and the correct counts are summed (every rank gets the same result).
    public func accuracy<Scalar: TensorScalar>(queries: Tensor<Scalar>, queryLabels: [Int64], bank: Tensor<Scalar>,
                                               bankLabels: [Int64], classCount: Int,
                                               communicator: any Communicator = SingleProcessCommunicator()) throws -> Double {
        guard queryLabels.count == queries.rowCount else {
            throw EvaluationError("k-NN: \(queries.rowCount) queries but \(queryLabels.count) labels")
        }
        guard queries.rowCount > 0 else { throw EvaluationError("k-NN: no queries") }
        let mine = GlobalBatchSampler.split(queries.rowCount, rank: communicator.rank, parts: communicator.size)
        var correct: Int64 = 0
        if !mine.isEmpty {
            let predicted = try predict(queries.rows(mine), bank: bank, bankLabels: bankLabels, classCount: classCount)
            correct = Int64(zip(predicted, queryLabels[mine]).filter { $0 == $1 }.count)
        }
        let total = try communicator.allReduce(correct, .sum)
        return Double(total) / Double(queries.rowCount)
    }
}
