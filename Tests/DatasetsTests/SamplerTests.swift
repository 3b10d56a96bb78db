import XCTest
import Datasets
import _TestSupport

final class GlobalBatchSamplerTests: XCTestCase {
    func testPermutationDependsOnSeedAndEpochOnly() throws {
        let sampler = try GlobalBatchSampler(rowCount: 1000, globalBatchSize: 64, seed: 5)
        let p0 = sampler.permutation(epoch: 0)
        XCTAssertEqual(p0.sorted(), Array(0..<1000))
        XCTAssertEqual(p0, try GlobalBatchSampler(rowCount: 1000, globalBatchSize: 64, seed: 5).permutation(epoch: 0))
        XCTAssertNotEqual(p0, sampler.permutation(epoch: 1))
        XCTAssertNotEqual(p0, try GlobalBatchSampler(rowCount: 1000, globalBatchSize: 64, seed: 6).permutation(epoch: 0))
        // The global batch size changes batching, not the epoch's order.
        XCTAssertEqual(p0, try GlobalBatchSampler(rowCount: 1000, globalBatchSize: 100, seed: 5).permutation(epoch: 0))
    }

    func testUnionOfRanksIsTheGlobalBatchForEveryWorldSize() throws {
        let sampler = try GlobalBatchSampler(rowCount: 103, globalBatchSize: 10, seed: 1)
        XCTAssertEqual(sampler.stepsPerEpoch, 10)   // 3 rows dropped each epoch
        for step in [0, 1, 9, 10, 25] {
            let global = Array(sampler.globalBatch(step: step))
            XCTAssertEqual(global.count, 10)
            for worldSize in 1...4 {
                let union = (0..<worldSize).flatMap { sampler.rows(step: step, rank: $0, worldSize: worldSize) }
                XCTAssertEqual(union, global, "step \(step), world size \(worldSize)")
            }
        }
        // Every row of an epoch appears at most once; epochs differ.
        let epoch0 = (0..<10).flatMap { sampler.globalBatch(step: $0) }
        XCTAssertEqual(Set(epoch0).count, 100)
        XCTAssertEqual(sampler.position(ofStep: 25).epoch, 2)
        XCTAssertEqual(sampler.position(ofStep: 25).stepInEpoch, 5)
    }

    func testUnevenSplitGivesFirstRanksOneMore() {
        XCTAssertEqual((0..<3).map { GlobalBatchSampler.split(10, rank: $0, parts: 3) }, [0..<4, 4..<7, 7..<10])
        XCTAssertEqual((0..<4).map { GlobalBatchSampler.split(2, rank: $0, parts: 4) }, [0..<1, 1..<2, 2..<2, 2..<2])
    }

    func testTooFewRowsIsAnError() {
        XCTAssertThrowsError(try GlobalBatchSampler(rowCount: 5, globalBatchSize: 8, seed: 0)) { error in
            XCTAssertTrue("\(error)".contains("fewer than one global batch of 8"), "\(error)")
        }
    }
}

final class AugmentationTests: XCTestCase {
    let normalization = Normalization(pixelScale: 1.0 / 255, mean: [0.13], standardDeviation: [0.31])

    func image() -> [Float] {
        (0..<(28 * 28)).map { i in Float((i / 28 > 8 && i / 28 < 20 && i % 28 > 10 && i % 28 < 18) ? 255 : 0) }
    }

    func view(_ augmentation: Augmentation, _ key: ViewKey) -> [Float] {
        var out = [Float](repeating: 0, count: 28 * 28)
        image().withUnsafeBufferPointer { source in
            out.withUnsafeMutableBufferPointer { target in
                augmentation.augmentImage(source, channels: 1, height: 28, width: 28, into: target,
                                          outputHeight: 28, outputWidth: 28, normalization: normalization, key: key)
            }
        }
        return out
    }

    func testViewsAreKeyedByRowAndViewNotByCaller() {
        let a = Augmentation()
        let key = ViewKey(seed: 3, epoch: 1, row: 17, view: 0)
        XCTAssertEqual(view(a, key), view(a, key))
        XCTAssertNotEqual(view(a, key), view(a, ViewKey(seed: 3, epoch: 1, row: 17, view: 1)))
        XCTAssertNotEqual(view(a, key), view(a, ViewKey(seed: 3, epoch: 2, row: 17, view: 0)))
        XCTAssertNotEqual(view(a, key), view(a, ViewKey(seed: 3, epoch: 1, row: 18, view: 0)))
    }

    func testIdentityAugmentationOnlyNormalises() {
        let out = view(.identity, ViewKey(seed: 0, epoch: 0, row: 0, view: 0))
        let expected = image().map { Float((Double($0) / 255 - 0.13) / 0.31) }
        assertClose(out, expected, rtol: 1e-5, atol: 1e-5)
    }

    func testVectorAugmentationMasksAndAddsNoise() {
        var a = Augmentation.identity
        a.featureMaskProbability = 0.5
        let source = [Float](repeating: 2, count: 1000)
        var out = [Float](repeating: 0, count: 1000)
        let n = Normalization(mean: [1], standardDeviation: [1])
        source.withUnsafeBufferPointer { s in
            out.withUnsafeMutableBufferPointer { a.augmentVector(s, into: $0, normalization: n, key: ViewKey(seed: 1, epoch: 0, row: 4, view: 1)) }
        }
        let zeros = out.filter { $0 == 0 }.count
        XCTAssertGreaterThan(zeros, 400); XCTAssertLessThan(zeros, 600)
        XCTAssertTrue(out.allSatisfy { $0 == 0 || $0 == 1 })
    }
}
