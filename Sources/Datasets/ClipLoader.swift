import Dispatch
import Foundation

/// Where a clip's frames come from.
public enum ClipFrames: Sendable {
    /// The frames stored in the shards' `/pixels`.
    case stored
    /// Frames of `[height, width, channels]` drawn from each state by `render`, which writes
    /// one HWC `uint8` frame into its output.
    case rendered(shape: [Int], render: @Sendable (ArraySlice<Float>, inout ArraySlice<UInt8>) -> Void)
}

/// This rank's clips of one global step, ready for a model.
public struct ClipBatch: Sendable {
    /// The global step.
    public let step: Int
    public let clips: [Clip]
    /// Frames a clip (`H + P`) and `[channels, height, width]` of one frame.
    public let frameCount: Int
    public let frameShape: [Int]
    /// `clips × frames × channels × height × width`, scaled to `[−1, 1]` (`v / 127.5 − 1`).
    public let observations: [Float]
    /// `clips × frames × (frameskip · actionDimension)`: each frame's block of actions.
    public let actions: [Float]
    /// `clips × frames × stateDimension`: the state at each frame.
    public let states: [Float]
}

/// Reads and renders this rank's clips of consecutive global steps, on a background thread.
///
/// A rank reads only the shards its clips lie in (their `/state` and `/action` columns, kept
/// in memory, 16 bytes a TwoRoom step) and, for stored frames, only its clips' frames. Clips
/// of a batch are made on `threads` threads.
public final class ClipLoader: @unchecked Sendable {
    // Unchecked Sendable: the configuration is immutable; the queue state is guarded by `condition`.

    public let dataset: TrajectoryDataset
    public let sampler: ClipSampler
    public let rank: Int
    public let worldSize: Int
    public let frames: ClipFrames
    public let threads: Int
    /// `[height, width, channels]` of a frame as stored or rendered.
    public let frameShape: [Int]

    private let condition = NSCondition()
    private var ready: [Int: Result<ClipBatch, Error>] = [:]
    private var nextToMake: Int
    private var nextToTake: Int
    private var stopped = false
    private let depth: Int
    /// The clip order of the latest epoch used (drawing it costs more than a batch).
    private let permutation = Locked<(epoch: Int, order: [Int])?>(nil)

    /// - Parameters:
    ///   - startStep: the first step ``next()`` returns (default 0).
    ///   - prefetchDepth: batches made ahead in the background (default 2; 0: made in `next()`).
    ///   - threads: threads making the clips of one batch (default 1).
    /// - Throws: ``DatasetError`` for a rank outside the world, stored frames the dataset lacks,
    ///   or a sampler for another dataset.
    public init(dataset: TrajectoryDataset, sampler: ClipSampler, rank: Int = 0, worldSize: Int = 1,
                frames: ClipFrames, startStep: Int = 0, prefetchDepth: Int = 2, threads: Int = 1) throws {
        guard worldSize >= 1, (0..<worldSize).contains(rank) else {
            throw DatasetError.invalid("rank \(rank) is not in a world of \(worldSize) ranks")
        }
        guard sampler.episodes.last.map({ $0 < dataset.episodes.count }) ?? true else {
            throw DatasetError.invalid("the clip sampler names episodes beyond the \(dataset.episodes.count) of \(dataset.location)")
        }
        switch frames {
        case .stored:
            guard let shape = dataset.frameShape else {
                throw DatasetError.invalid("\(dataset.location) stores no pixels; render frames from the states instead")
            }
            frameShape = shape
        case let .rendered(shape, _):
            guard shape.count == 3, shape.allSatisfy({ $0 > 0 }) else { throw DatasetError.invalid("frame shape \(shape) must be [height, width, channels]") }
            frameShape = shape
        }
        self.dataset = dataset; self.sampler = sampler; self.rank = rank; self.worldSize = worldSize
        self.frames = frames; self.threads = max(1, threads)
        self.nextToMake = startStep; self.nextToTake = startStep; self.depth = max(0, prefetchDepth)
        if depth > 0 {
            // The thread holds the loader only while making a batch or briefly waiting, so a
            // loader that is dropped without `stop()` is still freed (and stops in `deinit`).
            let thread = Thread { [weak self] in
                while let loader = self, loader.produceOne() {}
            }
            thread.name = "clip loader"
            thread.start()
        }
    }

    deinit { stop() }

    /// Ends the background thread; later ``next()`` calls throw.
    public func stop() {
        condition.lock(); stopped = true; condition.broadcast(); condition.unlock()
    }

    /// The batch of the next step (`startStep` first).
    public func next() throws -> ClipBatch {
        condition.lock()
        let step = nextToTake
        nextToTake += 1
        guard depth > 0 else {
            condition.unlock()
            return try batch(step: step)
        }
        defer { condition.unlock() }
        while ready[step] == nil && !stopped { condition.wait() }
        guard let result = ready.removeValue(forKey: step) else { throw DatasetError.invalid("the clip loader was stopped") }
        condition.broadcast()
        return try result.get()
    }

    /// Makes the next batch when there is room (or waits up to 50 ms for room); false once stopped.
    private func produceOne() -> Bool {
        condition.lock()
        if !stopped && ready.count >= depth { _ = condition.wait(until: Date(timeIntervalSinceNow: 0.05)) }
        if stopped { condition.unlock(); return false }
        guard ready.count < depth else { condition.unlock(); return true }
        let step = nextToMake
        nextToMake += 1
        condition.unlock()
        let result = Result { try batch(step: step) }
        condition.lock(); ready[step] = result; condition.broadcast(); condition.unlock()
        return true
    }

    /// This rank's clips of global step `step`, made on the calling thread (and `threads` helpers).
    public func batch(step: Int) throws -> ClipBatch {
        let epoch = sampler.sampler.position(ofStep: step).epoch
        let order = permutation.withLock { cached -> [Int] in
            if let cached, cached.epoch == epoch { return cached.order }
            let order = sampler.sampler.permutation(epoch: epoch)
            cached = (epoch, order)
            return order
        }
        let clips = sampler.sampler.rows(step: step, rank: rank, worldSize: worldSize, permutation: order).map(sampler.clip)
        let shape = sampler.shape, count = shape.frames
        let (height, width, channels) = (frameShape[0], frameShape[1], frameShape[2])
        let frameValues = height * width * channels
        let sd = dataset.stateDimension, ad = dataset.actionDimension
        let blockValues = shape.frameskip * ad
        var observations = [Float](repeating: 0, count: clips.count * count * frameValues)
        var actions = [Float](repeating: 0, count: clips.count * count * blockValues)
        var states = [Float](repeating: 0, count: clips.count * count * sd)
        let failure = Locked<Error?>(nil)
        let parts = min(threads, max(1, clips.count))
        let results = Locked([[Float]?](repeating: nil, count: clips.count))
        DispatchQueue.concurrentPerform(iterations: parts) { part in
            for i in GlobalBatchSampler.split(clips.count, rank: part, parts: parts) {
                do {
                    let made = try makeClip(clips[i], frameValues: frameValues)
                    results.withLock { $0[i] = made }
                } catch {
                    failure.withLock { $0 = $0 ?? error }
                }
            }
        }
        if let error = failure.withLock({ $0 }) { throw error }
        let made = results.withLock { $0 }
        for (i, clip) in clips.enumerated() {
            let episode = dataset.episodes[clip.episode]
            let (stateColumn, actionColumn) = try dataset.columns(ofShard: episode.shard)
            for k in 0..<count {
                let row = episode.offset + clip.start + k * shape.frameskip
                for j in 0..<sd { states[(i * count + k) * sd + j] = stateColumn[row * sd + j] }
                for j in 0..<blockValues { actions[(i * count + k) * blockValues + j] = actionColumn[row * ad + j] }
            }
            observations.replaceSubrange((i * count * frameValues)..<((i + 1) * count * frameValues), with: made[i]!)
        }
        return ClipBatch(step: step, clips: clips, frameCount: count, frameShape: [channels, height, width],
                         observations: observations, actions: actions, states: states)
    }

    /// The frames of one clip, CHW each, scaled to [−1, 1].
    private func makeClip(_ clip: Clip, frameValues: Int) throws -> [Float] {
        let shape = sampler.shape, count = shape.frames
        let episode = dataset.episodes[clip.episode]
        let rows = (0..<count).map { episode.offset + clip.start + $0 * shape.frameskip }
        var hwc: [UInt8]
        switch frames {
        case .stored:
            hwc = try dataset.pixels(shard: episode.shard, rows: rows)
        case let .rendered(_, render):
            let (stateColumn, _) = try dataset.columns(ofShard: episode.shard)
            let sd = dataset.stateDimension
            hwc = [UInt8](repeating: 0, count: count * frameValues)
            for (k, row) in rows.enumerated() {
                var slot = hwc[(k * frameValues)..<((k + 1) * frameValues)]
                render(stateColumn[(row * sd)..<((row + 1) * sd)], &slot)
                hwc.replaceSubrange((k * frameValues)..<((k + 1) * frameValues), with: slot)
            }
        }
        let (height, width, channels) = (frameShape[0], frameShape[1], frameShape[2])
        var out = [Float](repeating: 0, count: count * frameValues)
        for k in 0..<count {
            let base = k * frameValues
            for y in 0..<height {
                for x in 0..<width {
                    for c in 0..<channels {
                        out[base + (c * height + y) * width + x] = Float(hwc[base + (y * width + x) * channels + c]) / 127.5 - 1
                    }
                }
            }
        }
        return out
    }

    /// Loader throughput, for `anticollapse env bench-data` (later `anticollapse bench data`).
    public struct BenchmarkReport: Sendable, Equatable, CustomStringConvertible {
        public let clips: Int
        public let seconds: Double
        public var clipsPerSecond: Double { Double(clips) / seconds }
        public let frameShape: [Int]
        public let shape: ClipShape
        public var description: String {
            String(format: "%d clips (%@, frames %@) in %.2f s: %.0f clips/s, %.0f frames/s",
                   clips, shape.description, frameShape.map(String.init).joined(separator: "×"), seconds,
                   clipsPerSecond, clipsPerSecond * Double(shape.frames))
        }
    }

    /// Times `steps` batches of `globalBatchSize` clips on one rank (after one warm-up batch).
    public static func benchmark(dataset: TrajectoryDataset, shape: ClipShape, frames: ClipFrames, globalBatchSize: Int,
                                 steps: Int, threads: Int, seed: UInt64 = 0) throws -> BenchmarkReport {
        let sampler = try ClipSampler(episodeLengths: dataset.episodes.map(\.length), shape: shape,
                                      globalBatchSize: globalBatchSize, seed: seed)
        let loader = try ClipLoader(dataset: dataset, sampler: sampler, frames: frames, prefetchDepth: 2, threads: threads)
        defer { loader.stop() }
        _ = try loader.next()
        let start = DispatchTime.now().uptimeNanoseconds
        var clips = 0
        for _ in 0..<steps { clips += try loader.next().clips.count }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        return BenchmarkReport(clips: clips, seconds: seconds, frameShape: loader.frameShape, shape: shape)
    }
}

/// A value behind a lock, shared between the threads of a concurrent loop.
public final class Locked<Value>: @unchecked Sendable {
    // Unchecked Sendable: every access goes through the lock.
    private var value: Value
    private let lock = NSLock()
    public init(_ value: Value) { self.value = value }
    /// Runs `body` on the value with the lock held.
    public func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        lock.lock(); defer { lock.unlock() }
        return try body(&value)
    }
}
