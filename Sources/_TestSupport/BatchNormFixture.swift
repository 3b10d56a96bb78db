import Communication
import Layers

/// The synchronised batch-norm check, shared by the in-process tests (``ThreadCommunicator``)
/// and the `MPIHarness batchnorm` scenario (``MPICommunicator``).
///
/// A global batch of ``globalRows`` rows is split over the ranks (unevenly; with 3 or more ranks
/// rank 1 has no rows). Each rank runs, in `Double`, a `BatchNorm1d` on `(B, 3)` rows and a
/// `BatchNorm2d` on `(B, 2, 1, 2)` images for two training steps (forward, backward with a
/// fixed output gradient) and one evaluation forward, and reports under `"bn1d.…"` and
/// `"bn2d.…"`:
/// - `output`, `inputGradient`, `evalOutput`: this rank's rows (concatenated in rank order they
///   must equal one process's);
/// - `runningMean`, `runningVar`: the same on every rank and equal to one process's;
/// - `weightGradient`, `biasGradient`: this rank's contributions (summed over ranks they must
///   equal one process's).
/// Every value is a pure function of the row index, so no rank needs another's data. The shapes
/// are small so that a rank's JSON line stays under 4 KiB: `mpirun` may interleave longer lines
/// of different ranks.
public enum BatchNormFixture {
    /// The number of rows of the global batch.
    public static let globalRows = 7

    /// The rows of `rank`: an even split, except that with 3 or more ranks rank 1 gives its
    /// rows to rank 0 (a rank without rows must still work).
    public static func rows(rank: Int, size: Int) -> Range<Int> {
        var counts = (0..<size).map { globalRows / size + ($0 < globalRows % size ? 1 : 0) }
        if size >= 3 { counts[0] += counts[1]; counts[1] = 0 }
        let start = counts[..<rank].reduce(0, +)
        return start..<(start + counts[rank])
    }

    /// Runs the check on this rank with its rows ``rows(rank:size:)``.
    public static func run(on communicator: any Communicator) throws -> [String: JSONValue] {
        try run(on: communicator, rows: rows(rank: communicator.rank, size: communicator.size))
    }

    /// Runs the check with `communicator` on the global rows `rows`.
    public static func run(on communicator: any Communicator, rows: Range<Int>) throws -> [String: JSONValue] {
        var results: [String: JSONValue] = [:]
        try run(BatchNorm1d<Double>(features: 3), sample: [3], name: "bn1d", rows: rows, communicator: communicator,
                into: &results)
        try run(BatchNorm2d<Double>(features: 2), sample: [2, 1, 2], name: "bn2d", rows: rows,
                communicator: communicator, into: &results)
        return results
    }

    /// `rows` of a tensor of `sample`-shaped rows whose row `i` is drawn from stream `stream + i`:
    /// normal with mean 2 and standard deviation 3 (a mean far from 0 tests the shifted sums).
    static func tensor(rows: Range<Int>, sample: [Int], stream: UInt64) -> Tensor<Double> {
        let tensor = Tensor<Double>(zeros: [rows.count] + sample)
        for (local, row) in rows.enumerated() {
            CounterRandom(seed: 21, stream: stream + UInt64(row))
                .fillNormal(tensor.rows(local..<(local + 1)), mean: 2, standardDeviation: 3)
        }
        return tensor
    }

    private static func run(_ layer: BatchNorm<Double>, sample: [Int], name: String, rows: Range<Int>,
                            communicator: any Communicator, into results: inout [String: JSONValue]) throws {
        let parameters = ParameterStore<Double>(specs: layer.parameterSpecs(), seed: 3)
        let buffers = BufferStore<Double>(specs: layer.bufferSpecs(), seed: 3)
        CounterRandom(seed: 3, stream: 7).fillNormal(parameters.values, mean: 1, standardDeviation: 0.5)
        layer.bind(parameters: parameters, buffers: buffers, prefix: "")
        let training = LayerContext(training: true, communicator: communicator)
        var output = Tensor<Double>(zeros: [0]), inputGradient = output
        for step in 0..<2 {
            let input = tensor(rows: rows, sample: sample, stream: UInt64(1000 * step))
            output = try layer.forward(input, context: training)
            let outputGradient = tensor(rows: rows, sample: sample, stream: UInt64(1000 * step + 500))
            inputGradient = try layer.backward(outputGradient, context: training)
        }
        let evalOutput = try layer.forward(tensor(rows: rows, sample: sample, stream: 5000),
                                           context: LayerContext(training: false, communicator: communicator))
        results["\(name).output"] = JSONValue(output.scalars)
        results["\(name).inputGradient"] = JSONValue(inputGradient.scalars)
        results["\(name).evalOutput"] = JSONValue(evalOutput.scalars)
        results["\(name).runningMean"] = JSONValue(buffers.value("running_mean").scalars)
        results["\(name).runningVar"] = JSONValue(buffers.value("running_var").scalars)
        results["\(name).weightGradient"] = JSONValue(parameters.gradient("weight").scalars)
        results["\(name).biasGradient"] = JSONValue(parameters.gradient("bias").scalars)
    }

    /// The keys of the results.
    public static let keys: [String] = ["bn1d", "bn2d"].flatMap { name in
        ["output", "inputGradient", "evalOutput", "runningMean", "runningVar", "weightGradient", "biasGradient"]
            .map { "\(name).\($0)" }
    }

    /// How the ranks' values of `key` combine into one process's: concatenated in rank order,
    /// identical on every rank, or summed.
    public enum Combination { case concatenated, identical, summed }

    public static func combination(of key: String) -> Combination {
        if key.hasSuffix(".runningMean") || key.hasSuffix(".runningVar") { return .identical }
        if key.hasSuffix(".weightGradient") || key.hasSuffix(".biasGradient") { return .summed }
        return .concatenated
    }

    /// The ranks' values of `key` (in rank order) combined into what one process reports; for
    /// an `.identical` key, rank 0's value (the caller checks the others against it).
    public static func combine(_ values: [[Double]], key: String) -> [Double] {
        switch combination(of: key) {
        case .concatenated: return values.flatMap { $0 }
        case .identical: return values[0]
        case .summed: return values.dropFirst().reduce(values[0]) { zip($0, $1).map { $0 + $1 } }
        }
    }
}
