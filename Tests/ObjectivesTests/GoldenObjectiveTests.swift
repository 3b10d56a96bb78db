import Objectives
import XCTest
import _TestSupport

/// Every objective against the float64 references of `Fixtures/objectives.h5`, in `Float32`,
/// on one rank and split over 2, 3 and 4 in-process ranks (even and uneven splits, one with an
/// empty rank), on both the statistics and the gather path.
final class GoldenObjectiveTests: XCTestCase {
    static let lossTolerance = 1e-4
    static let gradientTolerance = 1e-3

    /// (ranks, uneven) splits every case is evaluated on.
    static let splits: [(ranks: Int, uneven: Bool)] = [(1, false), (2, false), (2, true), (3, false), (3, true),
                                                       (4, false), (4, true)]

    func testEveryObjectiveMatchesTheGoldenFileOnEverySplitAndPath() throws {
        try assertEveryObjectiveMatchesTheGoldenFile(paths: [.statistics, .gather], costModel: ReductionCostModel(),
                                                     combination: .perRankMeans)
    }

    /// The statistics path with a shared mean (a cost model without latency takes it on every
    /// world size): the moments formed about the global mean from a first all-reduce of the
    /// counts and sums match the references as the per-rank form does.
    func testEveryObjectiveMatchesTheGoldenFileWithASharedMean() throws {
        try assertEveryObjectiveMatchesTheGoldenFile(paths: [.statistics], costModel: ReductionCostModel(latency: 0),
                                                     combination: .sharedMean)
    }

    /// Every case and objective on every split and path of `paths`, with `costModel`; on the
    /// statistics path on several ranks the objectives with moments must combine them by
    /// `combination`.
    func assertEveryObjectiveMatchesTheGoldenFile(paths: [StatisticsReduction], costModel: ReductionCostModel,
                                                  combination: MomentCombination) throws {
        let cases = try GoldenCase.loadAll()
        XCTAssertEqual(cases.count, 6)
        var worst: [String: (loss: Double, gradient: Double, term: Double)] = [:]
        for golden in cases {
            for (objective, inputs, gradientKeys, termNames) in golden.objectives(as: Float.self) {
                let name = objective.name
                let expectedLoss = golden.scalar("\(name)/loss")
                let expectedGradients: [[Double]] = gradientKeys == ["grad_views"]
                    ? [golden.reference["\(name)/grad_views"]!]
                    : gradientKeys.map { golden.reference["\(name)/\($0)"]! }
                for (ranks, uneven) in Self.splits {
                    for reduction in paths where ranks > 1 || reduction == .statistics {
                        let counts = rowSplit(golden.batchSize, ranks: ranks, uneven: uneven)
                        let label = "\(golden.name) \(name) ranks \(counts) \(reduction)"
                        let evaluation = try evaluateSplit(objective, inputs: inputs, dimension: golden.dimension,
                                                           counts: counts, reduction: reduction, costModel: costModel)
                        let result = evaluation.results[0]
                        XCTAssertEqual(result.reduction, reduction, label)
                        let hasMoments = objective is VICReg<Float> || objective is BarlowTwins<Float> || objective is WMSE<Float>
                        XCTAssertEqual(Set(evaluation.results.map(\.momentCombination)),
                                       [ranks > 1 && reduction == .statistics && hasMoments ? combination : nil], label)
                        for other in evaluation.results.dropFirst() {
                            XCTAssertEqual(other.loss, result.loss, "every rank reports the same loss: \(label)")
                        }
                        let lossError = relativeError(result.loss, expectedLoss)
                        XCTAssertLessThanOrEqual(lossError, Self.lossTolerance, "loss \(result.loss) vs \(expectedLoss): \(label)")
                        let gradients = gradientKeys == ["grad_views"] ? [evaluation.gradients.flatMap { $0 }] : evaluation.gradients
                        var gradientError = 0.0
                        for (actual, expected) in zip(gradients, expectedGradients) {
                            gradientError = max(gradientError, relativeNormError(actual, expected))
                        }
                        XCTAssertLessThanOrEqual(gradientError, Self.gradientTolerance, "gradient: \(label)")
                        var termError = 0.0
                        for term in termNames {
                            guard let value = result[term: term] else { XCTFail("no term \(term): \(label)"); continue }
                            let error = relativeError(value, golden.scalar("\(name)/\(term)"))
                            termError = max(termError, error)
                            XCTAssertLessThanOrEqual(error, Self.lossTolerance, "term \(term): \(label)")
                        }
                        let previous = worst[name] ?? (0, 0, 0)
                        worst[name] = (max(previous.loss, lossError), max(previous.gradient, gradientError),
                                       max(previous.term, termError))
                    }
                }
            }
        }
        for (name, errors) in worst.sorted(by: { $0.key < $1.key }) {
            print(String(format: "golden %@: worst loss rel %.2e, gradient rel-norm %.2e, term rel %.2e",
                         name, errors.loss, errors.gradient, errors.term))
        }
    }
}
