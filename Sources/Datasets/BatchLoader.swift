import Foundation
import Tensor

/// Which views of each row a training step sees: `globalCount` views made with
/// `globalAugmentation` at the stored size, then `localCount` views made with
/// `localAugmentation` (LeJEPA / DINO "local" crops: a smaller crop scale, optionally a smaller
/// output image).
///
/// View `v` of a row is keyed by `ViewKey(seed, epoch, row, v)`, with the global views numbered
/// `0 ..< globalCount` and the local ones `globalCount ..< globalCount + localCount`.
public struct ViewPlan: Sendable, Equatable {
    /// The number of global views (2 for the two-view objectives).
    public var globalCount: Int
    /// The transformations of the global views.
    public var globalAugmentation: Augmentation
    /// The number of local views (0 unless the objective uses multi-crop, e.g. LeJEPA).
    public var localCount: Int
    /// The transformations of the local views; by default the global ones with a crop of
    /// 5–40 % of the image (DINO's local scale).
    public var localAugmentation: Augmentation
    /// The height and width of local image views, or nil (the default) for the stored size.
    /// Ignored for vector data.
    public var localImageSize: Int?

    /// - Parameters:
    ///   - globalCount: Global views a row (default 2).
    ///   - globalAugmentation: Their transformations (default ``Augmentation/init()``).
    ///   - localCount: Local views a row (default 0).
    ///   - localAugmentation: Their transformations (default: crop scale 0.05...0.4).
    ///   - localImageSize: Side of local image views (default nil: the stored size).
    public init(globalCount: Int = 2, globalAugmentation: Augmentation = Augmentation(),
                localCount: Int = 0, localAugmentation: Augmentation? = nil, localImageSize: Int? = nil) {
        self.globalCount = globalCount
        self.globalAugmentation = globalAugmentation
        self.localCount = localCount
        self.localAugmentation = localAugmentation ?? {
            var a = globalAugmentation
            a.cropScale = 0.05...0.4
            return a
        }()
        self.localImageSize = localImageSize
    }

    /// All views a row.
    public var viewCount: Int { globalCount + localCount }

    /// The augmentation of view `view`.
    public func augmentation(ofView view: Int) -> Augmentation {
        view < globalCount ? globalAugmentation : localAugmentation
    }
}

/// The part of one global batch that one rank trains on.
public struct Batch: Sendable {
    /// The global step.
    public let step: Int
    /// The epoch of the step and the step's position within it.
    public let epoch: Int
    public let stepInEpoch: Int
    /// The dataset rows of this rank, in order (global indices into the whole dataset).
    public let rows: [Int]
    /// One tensor a view, each `rows.count × viewShape` (the feature shape, or for local image
    /// views `channels × localImageSize × localImageSize`), normalised and augmented.
    public let views: [Tensor<Float>]
    /// The labels of `rows`, or nil when the dataset has none.
    public let labels: [Int64]?
}

/// Loads one rank's part of every global batch: reads only that rank's rows, makes their
/// views, and keeps the next batches ready on a background thread.
///
/// The rows of step `s` are those that ``GlobalBatchSampler/rows(step:rank:worldSize:permutation:)``
/// gives this rank, and each view is keyed by (seed, epoch, row, view), so the union over
/// ranks of their batches, and every view of every row, are the same for every world size.
///
/// `next()` returns the batches of consecutive steps from `startStep` (a resumed run passes its
/// checkpoint's step). The first call starts a prefetching thread that keeps up to
/// `prefetchDepth` batches ready while the caller computes; a loader error (with the file and
/// row it concerns) is thrown by the `next()` that would have returned that batch, and by every
/// later call. `stop()` (or `deinit`) ends the thread. `batch(step:)` reads synchronously and
/// never involves the thread.
public final class BatchLoader: @unchecked Sendable {
    // Unchecked Sendable: the immutable configuration is shared with the prefetching thread;
    // the queue has its own lock.

    /// The dataset read from.
    public let dataset: ShardedDataset
    /// Which rows make each global batch.
    public let sampler: GlobalBatchSampler
    /// This process's rank and the number of ranks.
    public let rank: Int
    public let worldSize: Int
    /// The views made of each row.
    public let plan: ViewPlan
    /// The seed of the augmentations (by default the sampler's).
    public let augmentationSeed: UInt64
    /// The step of the first batch `next()` returns.
    public let startStep: Int
    /// How many batches the prefetching thread keeps ready (0: `next()` reads synchronously).
    public let prefetchDepth: Int

    private let source: BatchSource
    private let queue: PrefetchQueue

    /// - Parameters:
    ///   - dataset: The opened dataset.
    ///   - sampler: The batches' rows; its `rowCount` must be the dataset's.
    ///   - rank: This process's rank, `0 ..< worldSize`.
    ///   - worldSize: The number of ranks sharing each global batch.
    ///   - plan: The views of each row (default: two global views).
    ///   - augmentationSeed: Keys the views (default nil: the sampler's seed).
    ///   - startStep: The first step `next()` returns (default 0; a resumed run's step).
    ///   - prefetchDepth: Batches kept ready in the background (default 2; 0 for none).
    /// - Throws: ``DatasetError/invalid(_:)`` for a rank outside the world, a sampler of another
    ///   dataset, a negative step or depth, or a view plan that makes no views.
    public init(dataset: ShardedDataset, sampler: GlobalBatchSampler, rank: Int = 0, worldSize: Int = 1,
                plan: ViewPlan = ViewPlan(), augmentationSeed: UInt64? = nil, startStep: Int = 0,
                prefetchDepth: Int = 2) throws {
        guard worldSize >= 1, (0..<worldSize).contains(rank) else {
            throw DatasetError.invalid("rank \(rank) is not in a world of \(worldSize) ranks")
        }
        guard sampler.rowCount == dataset.rowCount else {
            throw DatasetError.invalid("the sampler is for \(sampler.rowCount) rows but \(dataset.location) has \(dataset.rowCount)")
        }
        guard startStep >= 0 else { throw DatasetError.invalid("start step \(startStep) is negative") }
        guard prefetchDepth >= 0 else { throw DatasetError.invalid("prefetch depth \(prefetchDepth) is negative") }
        guard plan.globalCount >= 0, plan.localCount >= 0, plan.viewCount > 0 else {
            throw DatasetError.invalid("the view plan asks for \(plan.globalCount) global and \(plan.localCount) local views")
        }
        if let size = plan.localImageSize, size < 1 {
            throw DatasetError.invalid("local image size \(size) must be positive")
        }
        if dataset.isImage {
            let channels = dataset.featureShape[0]
            let norm = dataset.normalization
            guard norm.mean.count == 1 || norm.mean.count == channels,
                  norm.standardDeviation.count == 1 || norm.standardDeviation.count == channels else {
                throw DatasetError.invalid("\(dataset.location): channel_mean/std have \(norm.mean.count)/\(norm.standardDeviation.count) values for \(channels) channels")
            }
        }
        self.dataset = dataset
        self.sampler = sampler
        self.rank = rank
        self.worldSize = worldSize
        self.plan = plan
        self.augmentationSeed = augmentationSeed ?? sampler.seed
        self.startStep = startStep
        self.prefetchDepth = prefetchDepth
        self.source = BatchSource(dataset: dataset, sampler: sampler, rank: rank, worldSize: worldSize,
                                  plan: plan, seed: augmentationSeed ?? sampler.seed)
        self.queue = PrefetchQueue(nextStep: startStep, depth: prefetchDepth)
    }

    deinit { queue.stop() }

    /// The shape of view `view` of one row (without the leading row dimension).
    public func viewShape(_ view: Int) -> [Int] { source.viewShape(view) }

    /// Reads and augments this rank's part of global step `step`, on the calling thread.
    public func batch(step: Int) throws -> Batch { try source.batch(step: step) }

    /// The batch of the next step: `startStep` on the first call, then consecutive steps.
    ///
    /// - Throws: the error that loading this batch met (naming the file and row), and the same
    ///   error on every later call; ``DatasetError/invalid(_:)`` after `stop()`.
    public func next() throws -> Batch {
        if prefetchDepth == 0 {
            let step = try queue.takeStep()
            return try source.batch(step: step)
        }
        return try queue.next(startingWith: source)
    }

    /// Ends the prefetching thread (waiting for the batch it is making, if any); later `next()`
    /// calls throw. Safe to call more than once.
    public func stop() { queue.stop() }

    /// The rows' features, normalised but not augmented (``Augmentation/identity``), as one
    /// `rows.count × featureShape` tensor, and their labels: evaluation features.
    public func readNormalized(rows: [Int]) throws -> (features: Tensor<Float>, labels: [Int64]?) {
        try source.readNormalized(rows: rows)
    }
}

/// Makes batches: the configuration of a loader and the cached permutation of the current
/// epoch, shared by the caller's thread and the prefetching thread.
final class BatchSource: @unchecked Sendable {
    let dataset: ShardedDataset
    let sampler: GlobalBatchSampler
    let rank: Int
    let worldSize: Int
    let plan: ViewPlan
    let seed: UInt64

    private let lock = NSLock()
    private var cachedPermutation: (epoch: Int, order: [Int])?

    init(dataset: ShardedDataset, sampler: GlobalBatchSampler, rank: Int, worldSize: Int, plan: ViewPlan, seed: UInt64) {
        self.dataset = dataset; self.sampler = sampler; self.rank = rank; self.worldSize = worldSize
        self.plan = plan; self.seed = seed
    }

    func viewShape(_ view: Int) -> [Int] {
        guard dataset.isImage, view >= plan.globalCount, let size = plan.localImageSize else { return dataset.featureShape }
        return [dataset.featureShape[0], size, size]
    }

    private func permutation(epoch: Int) -> [Int] {
        if let cached = lock.withLock({ cachedPermutation }), cached.epoch == epoch { return cached.order }
        let order = sampler.permutation(epoch: epoch)
        lock.withLock { cachedPermutation = (epoch, order) }
        return order
    }

    func batch(step: Int) throws -> Batch {
        guard step >= 0 else { throw DatasetError.invalid("step \(step) is negative") }
        let (epoch, stepInEpoch) = sampler.position(ofStep: step)
        let rows = Array(sampler.rows(step: step, rank: rank, worldSize: worldSize, permutation: permutation(epoch: epoch)))
        let (features, labels) = try dataset.read(rows: rows)
        let views = (0..<plan.viewCount).map { view in
            makeView(features, rows: rows, augmentation: plan.augmentation(ofView: view), epoch: epoch, view: view,
                     shape: viewShape(view))
        }
        return Batch(step: step, epoch: epoch, stepInEpoch: stepInEpoch, rows: rows, views: views, labels: labels)
    }

    func readNormalized(rows: [Int]) throws -> (features: Tensor<Float>, labels: [Int64]?) {
        let (features, labels) = try dataset.read(rows: rows)
        return (makeView(features, rows: rows, augmentation: .identity, epoch: 0, view: 0, shape: dataset.featureShape), labels)
    }

    /// One view of every row: `rows.count × shape`.
    private func makeView(_ features: [Float], rows: [Int], augmentation: Augmentation, epoch: Int, view: Int,
                          shape: [Int]) -> Tensor<Float> {
        let output = Tensor<Float>(zeros: [rows.count] + shape)
        let inWidth = dataset.featureCount, outWidth = shape.reduce(1, *)
        let normalization = dataset.normalization
        if augmentation.isIdentity && shape == dataset.featureShape {
            // Evaluation features: normalisation only, without resampling.
            let channels = dataset.isImage ? dataset.featureShape[0] : 1
            let plane = inWidth / channels
            let scale = normalization.pixelScale
            features.withUnsafeBufferPointer { source in
                output.withUnsafeMutableBufferPointer { target in
                    for i in 0..<(rows.count * inWidth) {
                        let feature = i % inWidth
                        let channel = dataset.isImage ? feature / plane : feature
                        let mean = normalization.mean[channel % normalization.mean.count]
                        let std = normalization.standardDeviation[channel % normalization.standardDeviation.count]
                        target[i] = Float((Double(source[i]) * scale - mean) / std)
                    }
                }
            }
            return output
        }
        features.withUnsafeBufferPointer { source in
            output.withUnsafeMutableBufferPointer { target in
                for (i, row) in rows.enumerated() {
                    let key = ViewKey(seed: seed, epoch: epoch, row: row, view: view)
                    let input = UnsafeBufferPointer(rebasing: source[(i * inWidth)..<((i + 1) * inWidth)])
                    let out = UnsafeMutableBufferPointer(rebasing: target[(i * outWidth)..<((i + 1) * outWidth)])
                    if dataset.isImage {
                        let fs = dataset.featureShape
                        augmentation.augmentImage(input, channels: fs[0], height: fs[1], width: fs[2], into: out,
                                                  outputHeight: shape[1], outputWidth: shape[2],
                                                  normalization: normalization, key: key)
                    } else {
                        augmentation.augmentVector(input, into: out, normalization: normalization, key: key)
                    }
                }
            }
        }
        return output
    }
}

/// The batches made ahead by the prefetching thread, and the steps handed out.
///
/// One condition variable guards everything: the thread waits while `depth` batches are ready,
/// the caller waits while none is.
final class PrefetchQueue: @unchecked Sendable {
    private let condition = NSCondition()
    private let depth: Int
    /// The next step to make (thread) or to hand out (synchronous mode).
    private var nextStep: Int
    private var ready: [Result<Batch, Error>] = []
    private var started = false
    private var stopped = false
    private var threadRunning = false
    /// The first error met; thrown by every `next()` after the batches before it.
    private var failure: Error?

    init(nextStep: Int, depth: Int) {
        self.nextStep = nextStep
        self.depth = depth
    }

    /// Synchronous mode: the next step to read.
    func takeStep() throws -> Int {
        condition.lock()
        defer { condition.unlock() }
        guard !stopped else { throw DatasetError.invalid("the batch loader is stopped") }
        defer { nextStep += 1 }
        return nextStep
    }

    /// The next prefetched batch, starting the thread on the first call.
    func next(startingWith source: BatchSource) throws -> Batch {
        condition.lock()
        defer { condition.unlock() }
        if !started && !stopped {
            started = true
            threadRunning = true
            let thread = Thread { [self] in produce(source) }
            thread.name = "BatchLoader prefetch (rank \(source.rank))"
            thread.start()
        }
        while ready.isEmpty && threadRunning { condition.wait() }
        guard !ready.isEmpty else {
            if let failure { throw failure }
            throw DatasetError.invalid("the batch loader is stopped")
        }
        let result = ready.removeFirst()
        condition.broadcast()
        return try result.get()
    }

    /// The prefetching thread: makes batches of consecutive steps until stopped or failed.
    private func produce(_ source: BatchSource) {
        condition.lock()
        while true {
            while !stopped && ready.count >= depth { condition.wait() }
            if stopped || failure != nil { break }
            let step = nextStep
            nextStep += 1
            condition.unlock()
            let result = Result { try source.batch(step: step) }
            condition.lock()
            if stopped { break }
            ready.append(result)
            if case let .failure(error) = result { failure = error }
            condition.broadcast()
        }
        threadRunning = false
        condition.broadcast()
        condition.unlock()
    }

    /// Stops the thread and waits until it has finished.
    func stop() {
        condition.lock()
        stopped = true
        condition.broadcast()
        while threadRunning { condition.wait() }
        ready.removeAll()
        condition.unlock()
    }
}
