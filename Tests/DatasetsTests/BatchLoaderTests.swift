import Foundation
import XCTest
import Datasets
import _TestSupport

/// The bits of a tensor's elements, for bit-for-bit comparisons.
func bits(_ tensor: Tensor<Float>) -> [UInt32] { tensor.withUnsafeBufferPointer { $0.map(\.bitPattern) } }

/// Ranks' batches put together are the single process's batch, bit for bit.
final class BatchLoaderTests: XCTestCase {
    /// 240 images of 1×12×12 in 3 shards (small, so augmenting in a debug build is quick).
    func makeImages() throws -> String {
        let directory = try temporaryDirectory(for: self).path
        try SyntheticData(kind: .images, rows: 240, classes: 4, size: 12, seed: 9).write(to: directory, trainShards: 3)
        return (directory as NSString).appendingPathComponent("train")
    }

    /// Two global views, two local views of 6×6 with their own crop scale.
    let plan = ViewPlan(globalCount: 2, localCount: 2, localImageSize: 6)
    let steps = [0, 1, 7, 8, 11]   // 8 steps an epoch: crosses into epoch 1

    func testRanksTogetherGiveTheSingleProcessBatchForWorldSizes1To4() throws {
        let path = try makeImages()
        let reference = try BatchLoader(dataset: try ShardedDataset(path),
                                        sampler: try GlobalBatchSampler(rowCount: 240, globalBatchSize: 30, seed: 4),
                                        plan: plan, prefetchDepth: 0)
        XCTAssertEqual(reference.sampler.stepsPerEpoch, 8)
        let expected = try steps.map { try reference.batch(step: $0) }
        XCTAssertEqual(expected[0].views.map(\.shape), [[30, 1, 12, 12], [30, 1, 12, 12], [30, 1, 6, 6], [30, 1, 6, 6]])
        XCTAssertEqual(expected[3].epoch, 1)
        XCTAssertEqual(expected[3].stepInEpoch, 0)
        XCTAssertNotEqual(bits(expected[0].views[0]), bits(expected[0].views[1]), "views of a row differ")

        for worldSize in 1...4 {
            let plan = self.plan, steps = self.steps
            let perRank = try runRanks(worldSize) { communicator -> (batches: [Batch], rowsRead: Int) in
                // Each rank opens the dataset itself, as an MPI rank would.
                let dataset = try ShardedDataset(path)
                let sampler = try GlobalBatchSampler(rowCount: dataset.rowCount, globalBatchSize: 30, seed: 4)
                let loader = try BatchLoader(dataset: dataset, sampler: sampler, rank: communicator.rank,
                                             worldSize: communicator.size, plan: plan, prefetchDepth: 0)
                let batches = try steps.map { try loader.batch(step: $0) }
                return (batches, dataset.rowsRead)
            }
            for (index, step) in steps.enumerated() {
                let want = expected[index]
                let union = perRank.flatMap { $0.batches[index].rows }
                XCTAssertEqual(union, want.rows, "rows of step \(step), world size \(worldSize)")
                XCTAssertEqual(union, Array(reference.sampler.globalBatch(step: step)))
                XCTAssertEqual(perRank.flatMap { $0.batches[index].labels ?? [] }, want.labels)
                for view in 0..<plan.viewCount {
                    let joined = perRank.flatMap { bits($0.batches[index].views[view]) }
                    // Bit for bit (a Bool, so that a failure does not print thousands of numbers).
                    XCTAssertTrue(joined == bits(want.views[view]), "view \(view) of step \(step), world size \(worldSize)")
                }
                for (rank, part) in perRank.enumerated() {
                    XCTAssertEqual(part.batches[index].step, step)
                    XCTAssertEqual(part.batches[index].rows.count, GlobalBatchSampler.split(30, rank: rank, parts: worldSize).count)
                }
            }
            // Each rank read exactly its own rows, nothing more.
            for (rank, part) in perRank.enumerated() {
                XCTAssertEqual(part.rowsRead, part.batches.map(\.rows.count).reduce(0, +), "rank \(rank) of \(worldSize)")
            }
        }
    }

    func testPrefetchingGivesTheSynchronousBatchesFromTheStartStep() throws {
        let path = try makeImages()
        let dataset = try ShardedDataset(path)
        let sampler = try GlobalBatchSampler(rowCount: 240, globalBatchSize: 24, seed: 1)
        let synchronous = try BatchLoader(dataset: dataset, sampler: sampler, rank: 1, worldSize: 3, plan: plan, prefetchDepth: 0)
        for depth in [0, 1, 2, 4] {
            let loader = try BatchLoader(dataset: dataset, sampler: sampler, rank: 1, worldSize: 3, plan: plan,
                                         startStep: 7, prefetchDepth: depth)
            for step in 7..<13 {
                let got = try loader.next()
                let want = try synchronous.batch(step: step)
                XCTAssertEqual(got.step, step, "depth \(depth)")
                XCTAssertEqual(got.rows, want.rows)
                XCTAssertEqual(got.labels, want.labels)
                XCTAssertTrue(got.views.map(bits) == want.views.map(bits), "views of step \(step), depth \(depth)")
            }
            loader.stop()
            loader.stop()
            assertThrowsError(try loader.next(), containing: "stopped")
        }
        // Dropping a loader whose thread is mid-way ends the thread (deinit does not hang).
        for _ in 0..<3 {
            let loader = try BatchLoader(dataset: dataset, sampler: sampler, plan: plan, prefetchDepth: 3)
            _ = try loader.next()
        }
    }

    func testLoaderErrorsReachTheCallerWithFileAndRow() throws {
        let directory = try temporaryDirectory(for: self).path
        var values = (0..<(40 * 3)).map { Float($0) }
        values[27 * 3 + 1] = .nan   // row 27 = shard 1, local row 7
        let rows = try DatasetRows(featureShape: [3], values: .float32(values), labels: nil)
        let attributes = ShardWriter.Attributes(pixelScale: 1, channelMean: [0], channelStandardDeviation: [1],
                                                classCount: nil, source: "test")
        let paths = try ShardWriter.write(rows, to: directory, name: "bad", shardCount: 2, attributes: attributes)
        let dataset = try ShardedDataset(directory)
        let sampler = try GlobalBatchSampler(rowCount: 40, globalBatchSize: 40, seed: 0)
        let loader = try BatchLoader(dataset: dataset, sampler: sampler, plan: ViewPlan(globalCount: 1))
        assertThrowsError(try loader.next(), containing: paths[1], "row 7", "dataset row 27", "nan")
        // The error stays: later calls throw it too instead of waiting forever.
        assertThrowsError(try loader.next(), containing: paths[1], "row 7")
    }

    func testEvaluationFeaturesAreNormalisedRows() throws {
        let path = try makeImages()
        let dataset = try ShardedDataset(path)
        let loader = try BatchLoader(dataset: dataset, sampler: try GlobalBatchSampler(rowCount: 240, globalBatchSize: 10, seed: 0))
        let rows = [5, 100, 239]
        let (features, labels) = try loader.readNormalized(rows: rows)
        XCTAssertEqual(features.shape, [3, 1, 12, 12])
        let (raw, rawLabels) = try dataset.read(rows: rows)
        XCTAssertEqual(labels, rawLabels)
        let n = dataset.normalization
        let expected = raw.map { Float((Double($0) * n.pixelScale - n.mean[0]) / n.standardDeviation[0]) }
        assertClose(features.withUnsafeBufferPointer { Array($0) }, expected, rtol: 1e-5, atol: 1e-5)
    }

    func testBadLoaderSettingsAreErrors() throws {
        let path = try makeImages()
        let dataset = try ShardedDataset(path)
        let sampler = try GlobalBatchSampler(rowCount: 240, globalBatchSize: 10, seed: 0)
        assertThrowsError(try BatchLoader(dataset: dataset, sampler: sampler, rank: 2, worldSize: 2), containing: "rank 2")
        assertThrowsError(try BatchLoader(dataset: dataset, sampler: try GlobalBatchSampler(rowCount: 100, globalBatchSize: 10, seed: 0)),
                          containing: "100 rows", "240")
        assertThrowsError(try BatchLoader(dataset: dataset, sampler: sampler, plan: ViewPlan(globalCount: 0)), containing: "view plan")
    }
}
