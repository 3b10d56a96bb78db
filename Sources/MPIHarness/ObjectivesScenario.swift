import Communication
import HDF5
import Objectives
import Tensor
import _TestSupport

/// Evaluates every objective on every case of the golden file `objectives.h5` (see
/// `Tests/ObjectivesTests/Fixtures/README.md`) in `Float32`, each rank on its contiguous share
/// of the rows (the first `N mod P` ranks hold one more), on the statistics and on the gather path.
///
/// Reports, for `<case>/<objective>/<path>`: `loss`, every named term, `rows` (this rank's
/// first row and count) and this rank's gradient rows of each input (`grad_z1`, `grad_z2`, or
/// `grad_views` for LeJEPA's three views, view after view). The test concatenates the ranks'
/// rows and compares them with the file.
///
/// That is about a megabyte a rank: launch it with the harness's `--report-dir`, as
/// `MPIRun.launch` does.
func objectivesScenario(_ communicator: any Communicator, _ arguments: ScenarioArguments) throws -> [String: JSONValue] {
    let path = try arguments.string("fixture")
    var values: [String: JSONValue] = [:]
    try HDF5File.withFile(path) { file in
        for entry in try file.children() where entry.kind == .group {
            let name = entry.name
            let (shape, z1) = try file.read(Double.self, from: "\(name)/z1")
            let (n, d) = (shape[0], shape[1])
            let z2 = try file.read(Double.self, from: "\(name)/z2").values
            let views = try file.read(Double.self, from: "\(name)/views").values
            let (sliceShape, slices) = try file.read(Double.self, from: "\(name)/slices")
            let directions = Tensor<Float>(shape: sliceShape, scalars: slices.map { Float($0) })

            // This rank's rows.
            let size = communicator.size, rank = communicator.rank
            let count = n / size + (rank < n % size ? 1 : 0)
            let first = rank * (n / size) + min(rank, n % size)
            func local(_ values: [Double], block: Int = 0) -> Tensor<Float> {
                let start = block * n * d + first * d
                return Tensor<Float>(shape: [count, d], scalars: values[start ..< start + count * d].map { Float($0) })
            }
            var objectives: [(any Objective<Float>, [Tensor<Float>], [String])] = [
                (VICReg<Float>(), [local(z1), local(z2)], ["grad_z1", "grad_z2"]),
                (BarlowTwins<Float>(), [local(z1), local(z2)], ["grad_z1", "grad_z2"]),
                (SIGReg<Float>(directions: .explicit(directions)), [local(z1)], ["grad_z1"]),
                (LeJEPA<Float>(globalViewCount: 3, directions: .explicit(directions)),
                 (0..<3).map { local(views, block: $0) }, ["grad_views"]),
            ]
            if try file.contains("\(name)/wmse") {
                objectives.append((WMSE<Float>(), [local(z1), local(z2)], ["grad_z1", "grad_z2"]))
            }

            for (objective, inputs, gradientNames) in objectives {
                for reduction in [StatisticsReduction.statistics, .gather] {
                    let gradients = inputs.map { Tensor<Float>(zeros: $0.shape) }
                    let result = try objective.evaluate(views: inputs, gradients: gradients,
                                                        context: ObjectiveContext(communicator: communicator,
                                                                                  reduction: reduction))
                    let key = "\(name)/\(objective.name)/\(reduction)"
                    values["\(key)/loss"] = JSONValue([result.loss])
                    for term in result.terms { values["\(key)/\(term.name)"] = JSONValue([term.value]) }
                    values["\(key)/rows"] = JSONValue([Int64(first), Int64(count)])
                    if gradientNames == ["grad_views"] {
                        values["\(key)/grad_views"] = JSONValue(gradients.flatMap(\.scalars))
                    } else {
                        for (gradientName, gradient) in zip(gradientNames, gradients) {
                            values["\(key)/\(gradientName)"] = JSONValue(gradient.scalars)
                        }
                    }
                }
            }
        }
    }

    // VICReg's Gram form on the gather path (2N < D), which no golden case reaches: the test
    // compares it with one process.
    let data = VICRegGramFixture.views(), n = VICRegGramFixture.rows, d = VICRegGramFixture.dimension
    let size = communicator.size, rank = communicator.rank
    let count = n / size + (rank < n % size ? 1 : 0), first = rank * (n / size) + min(rank, n % size)
    let inputs = data.map { Tensor<Float>(shape: [count, d], scalars: $0[first * d ..< (first + count) * d].map { Float($0) }) }
    // Split by rows (the default cost model, for blocks this small) and by features (a cost
    // model of free collectives): `gather` and `gather-features`.
    let costModels = [("gather", ReductionCostModel()), ("gather-features", ReductionCostModel(latency: 0, bandwidth: 1e18, flopRate: 1e9))]
    for (key, costModel) in costModels {
        let gradients = inputs.map { Tensor<Float>(zeros: $0.shape) }
        let result = try VICReg<Float>().evaluate(views: inputs, gradients: gradients,
                                                  context: ObjectiveContext(communicator: communicator, reduction: .gather,
                                                                            costModel: costModel))
        values["gram/vicreg/\(key)/loss"] = JSONValue([result.loss])
        values["gram/vicreg/\(key)/rows"] = JSONValue([Int64(first), Int64(count)])
        values["gram/vicreg/\(key)/grad_z1"] = JSONValue(gradients[0].scalars)
        values["gram/vicreg/\(key)/grad_z2"] = JSONValue(gradients[1].scalars)
        values["gram/vicreg/\(key)/bytes"] = JSONValue([Int64(result.communicatedBytes)])
    }
    return values
}
