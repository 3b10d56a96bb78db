import Engine
import Foundation
import Layers
import Optimizers

extension Benchmarks {
    // MARK: Checkpoint

    /// What the checkpoint benchmark measured.
    public struct CheckpointReport: Sendable, Codable, Equatable {
        public var encoder: [Int], projector: [Int]
        /// Tensors in the checkpoint (parameters, buffers, LARS `mu`).
        public var tensorCount: Int
        /// Size of the file written, in MB (10⁶ bytes).
        public var megabytes: Double
        public var repeats: Int
        /// File MB over the seconds of ``HDF5CheckpointDirectory/write(_:)`` (including its
        /// `fsync` and rename) and of ``HDF5CheckpointDirectory/read(_:)``, median over the repeats.
        public var writeMegabytesPerSecond: Double, readMegabytesPerSecond: Double

        public var table: String {
            func f(_ x: Double) -> String { String(format: "%.1f", x) }
            return "checkpoint of encoder \(encoder) projector \(projector): \(tensorCount) tensors, \(f(megabytes)) MB\n"
                + "write \(f(writeMegabytesPerSecond)) MB/s, read \(f(readMegabytesPerSecond)) MB/s (median of \(repeats))"
        }
    }

    /// Writes the checkpoint of a freshly built model and its LARS state with
    /// ``HDF5CheckpointDirectory`` `repeats` times and reads each back, in a new directory under
    /// `parent` that is removed before returning (also on an error).
    /// - Parameters:
    ///   - encoder, projector: MLP widths, as ``StepOptions`` takes them.
    ///   - repeats: writes and reads timed; the rates are their medians.
    ///   - parent: where the temporary directory goes (default: the system's temporary directory).
    public static func checkpoint(encoder: [Int], projector: [Int], repeats: Int = 3,
                                  in parent: URL = FileManager.default.temporaryDirectory) throws -> CheckpointReport {
        precondition(repeats >= 1, "the checkpoint benchmark needs at least one repeat")
        let options = StepOptions(encoder: encoder, projector: projector)
        let model = try Model<Float>(options.model, seed: options.seed)
        let optimizer = try LARS(parameters: model.parameters, learningRate: 0.2, weightDecay: 1e-6)
        let tensors = Checkpoint.tensors(of: model, optimizerSlots: optimizer.slotNames.map { ($0, optimizer.slot($0)) })
        let checkpoint = Checkpoint(step: 1, epoch: 0, stepInEpoch: 1, seed: options.seed, globalBatchSize: options.batch,
                                    worldSize: 1, optimizerName: "lars", optimizerStepCount: optimizer.stepCount,
                                    config: "", codeVersion: "bench", tensors: tensors)

        let directory = parent.appendingPathComponent("anticollapse-bench-checkpoint-\(UUID().uuidString)", isDirectory: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let storage = HDF5CheckpointDirectory(directory: directory.path)
        func seconds(_ body: () throws -> Void) rethrows -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            try body()
            return Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        }
        var bytes = 0.0, writes: [Double] = [], reads: [Double] = []
        for _ in 0..<repeats {
            var path = ""
            writes.append(try seconds { path = try storage.write(checkpoint) })
            bytes = Double((try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? 0)
            var back: Checkpoint?
            reads.append(try seconds { back = try storage.read(path) })
            guard back?.tensors.count == tensors.count else {
                throw CheckpointError(path: path, problem: "read back \(back?.tensors.count ?? 0) tensors, wrote \(tensors.count)")
            }
            try storage.remove(path)
        }
        return CheckpointReport(encoder: encoder, projector: projector, tensorCount: tensors.count,
                                megabytes: bytes / 1e6, repeats: repeats,
                                writeMegabytesPerSecond: median(writes.map { bytes / 1e6 / $0 }),
                                readMegabytesPerSecond: median(reads.map { bytes / 1e6 / $0 }))
    }
}
