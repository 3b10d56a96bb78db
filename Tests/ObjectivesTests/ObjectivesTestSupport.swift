import Foundation
import HDF5
import Objectives
import XCTest
import _TestSupport

/// One case of the golden file `Fixtures/objectives.h5` (see its README): a global batch and
/// the float64 reference losses, terms and gradients of every objective.
struct GoldenCase: Sendable {
    let name: String
    let batchSize: Int
    let dimension: Int
    /// `z1`, `z2`: `N × D`; `views`: the three LeJEPA views, `N × D` each; `slices`: `D × K`.
    let z1: [Double], z2: [Double], views: [[Double]], slices: [Double]
    let sliceCount: Int
    /// `objective/key` → values (scalars have one element).
    let reference: [String: [Double]]

    static var fixturePath: String {
        Bundle.module.url(forResource: "Fixtures/objectives", withExtension: "h5")!.path
    }

    /// Every case of the golden file, in file order.
    static func loadAll(path: String = fixturePath) throws -> [GoldenCase] {
        try HDF5File.withFile(path) { file in
            try file.children().filter { $0.kind == .group }.map { entry in
                try GoldenCase(file: file, name: entry.name)
            }
        }
    }

    init(file: HDF5File, name: String) throws {
        self.name = name
        let (shape, z1) = try file.read(Double.self, from: "\(name)/z1")
        batchSize = shape[0]
        dimension = shape[1]
        self.z1 = z1
        z2 = try file.read(Double.self, from: "\(name)/z2").values
        let views = try file.read(Double.self, from: "\(name)/views").values
        let block = batchSize * dimension
        self.views = (0..<3).map { Array(views[$0 * block ..< ($0 + 1) * block]) }
        let (sliceShape, slices) = try file.read(Double.self, from: "\(name)/slices")
        self.slices = slices
        sliceCount = sliceShape[1]
        var reference: [String: [Double]] = [:]
        // The golden file's group of each objective, and the objective's one name here
        // (the file calls Barlow Twins "barlow").
        let groups = ["vicreg": "vicreg", "barlow": "barlow_twins", "wmse": "wmse", "sigreg": "sigreg", "lejepa": "lejepa"]
        for (group, objective) in groups where try file.contains("\(name)/\(group)") {
            for entry in try file.children(of: "\(name)/\(group)") where entry.kind == .dataset {
                reference["\(objective)/\(entry.name)"] = try file.read(Double.self, from: "\(name)/\(group)/\(entry.name)").values
            }
        }
        self.reference = reference
    }

    func scalar(_ key: String) -> Double { reference[key]![0] }

    /// The objectives the golden file defines, configured as the file computes them, with the
    /// inputs (row-major `N × D` each) and the names of the reference gradients.
    func objectives<Scalar: TensorScalar & CommunicableScalar>(as _: Scalar.Type)
        -> [(objective: any Objective<Scalar>, inputs: [[Double]], gradientKeys: [String], terms: [String])] {
        let directions = Tensor<Scalar>(shape: [dimension, sliceCount], scalars: slices.map { Scalar($0) })
        var list: [(any Objective<Scalar>, [[Double]], [String], [String])] = [
            (VICReg<Scalar>(), [z1, z2], ["grad_z1", "grad_z2"], ["invariance", "variance", "covariance"]),
            (BarlowTwins<Scalar>(), [z1, z2], ["grad_z1", "grad_z2"], ["on_diagonal", "off_diagonal"]),
            (SIGReg<Scalar>(directions: .explicit(directions)), [z1], ["grad_z1"], []),
            (LeJEPA<Scalar>(globalViewCount: 3, directions: .explicit(directions)), views,
             ["grad_views"], ["invariance", "sigreg"]),
        ]
        if reference["wmse/loss"] != nil {
            list.append((WMSE<Scalar>(), [z1, z2], ["grad_z1", "grad_z2"], []))
        }
        return list
    }
}

/// Row counts of `total` rows over `ranks` ranks: an even split, or an uneven one in which
/// rank 1 (of 3 or more) holds no rows at all.
func rowSplit(_ total: Int, ranks: Int, uneven: Bool) -> [Int] {
    guard uneven, ranks > 1 else {
        return (0..<ranks).map { total / ranks + ($0 < total % ranks ? 1 : 0) }
    }
    // Weights 2, 0, 1, 3, … (rank 1 empty when there are at least 3 ranks; 2 ranks: 1 : 3).
    let weights = ranks == 2 ? [1, 3] : (0..<ranks).map { $0 == 1 ? 0 : $0 + 2 }
    let sum = weights.reduce(0, +)
    var counts = weights.map { total * $0 / sum }
    counts[ranks - 1] += total - counts.reduce(0, +)
    return counts
}

/// What one evaluation on a split global batch produced.
struct SplitEvaluation {
    /// Every rank's result, in rank order.
    let results: [ObjectiveResult]
    /// The gradient of each input over the whole global batch (the ranks' rows concatenated).
    let gradients: [[Double]]
}

/// Evaluates `objective` with the global batch `inputs` (`N × D` each, row-major) split over
/// `counts.count` in-process ranks.
func evaluateSplit<Scalar: TensorScalar & CommunicableScalar>(
    _ objective: any Objective<Scalar>, inputs: [[Double]], dimension: Int, counts: [Int],
    reduction: StatisticsReduction, step: Int = 0, seed: UInt64 = 0, knownRowCounts: Bool = false,
    costModel: ReductionCostModel = ReductionCostModel()
) throws -> SplitEvaluation {
    let offsets = counts.indices.map { counts.prefix($0).reduce(0, +) }
    let perRank = try runRanks(counts.count) { communicator -> (ObjectiveResult, [[Double]]) in
        let rank = communicator.rank, rows = offsets[rank] ..< offsets[rank] + counts[rank]
        let views = inputs.map { input in
            Tensor<Scalar>(shape: [rows.count, dimension],
                           scalars: input[rows.lowerBound * dimension ..< rows.upperBound * dimension].map { Scalar($0) })
        }
        let gradients = views.map { Tensor<Scalar>(shape: $0.shape, repeating: .nan) }
        let context = ObjectiveContext(communicator: communicator, step: step, seed: seed, reduction: reduction,
                                       costModel: costModel, rowCounts: knownRowCounts ? counts : nil)
        let result = try objective.evaluate(views: views, gradients: gradients, context: context)
        return (result, gradients.map { $0.scalars.map { Double($0) } })
    }
    let gradients = inputs.indices.map { v in perRank.flatMap { $0.1[v] } }
    return SplitEvaluation(results: perRank.map(\.0), gradients: gradients)
}

/// The relative error `|actual − expected| / |expected|`.
func relativeError(_ actual: Double, _ expected: Double) -> Double {
    expected == 0 ? Swift.abs(actual) : Swift.abs(actual - expected) / Swift.abs(expected)
}
