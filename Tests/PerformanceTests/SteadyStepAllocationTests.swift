import Communication
import Engine
import JointEmbedding
import Layers
import Objectives
import Optimizers
import Performance
import Tensor
import XCTest
import _TestSupport

/// A steady training step allocates no tensor storage: layers, objectives and the optimizer
/// reuse their buffers across steps (the first steps may allocate; later ones must not).
final class SteadyStepAllocationTests: XCTestCase {
    func allocations(objective name: ObjectiveName, ranks: Int = 1, network: NetworkDescription? = nil,
                     projector: [Int]? = nil) throws -> [Int] {
        let options = Benchmarks.StepOptions(encoder: [24, 32, 32], projector: projector ?? [32, 64, name == .wmse ? 8 : 48],
                                             network: network, batch: 16, objective: name,
                                             steps: 1, warmup: 0, directions: 16)
        let results = try ThreadCommunicator.run(worldSize: ranks) { communicator -> [Int] in
            let model = try Model<Float>(options.model, seed: 1)
            let optimizer = try LARS(parameters: model.parameters, learningRate: 0.1, weightDecay: 1e-6)
            let trainStep = TrainStep(parameters: model.parameters, optimizer: optimizer, communicator: communicator)
            let modelStep = JointEmbeddingStep(model: model, objective: try Benchmarks.makeObjective(name, directions: 16),
                                               seed: 1, rowCounts: [Int](repeating: 16, count: ranks))
            let views = (0..<2).map { v in
                let x = Tensor<Float>(zeros: [16] + options.inputShape)
                CounterRandom(seed: 2, streamName: "view\(v)").fillNormal(x, start: UInt64(communicator.rank * 1000))
                return x
            }
            let clock = PhaseClock()
            var counts: [Int] = []
            for step in 0..<5 {
                try communicator.barrier()
                let before = TensorAllocations.snapshot.count
                try trainStep.run(learningRate: 0.1) {
                    try modelStep.forwardBackward(views: views, step: step, communicator: communicator, clock: clock)
                }
                try communicator.barrier()
                counts.append(TensorAllocations.snapshot.count - before)
            }
            return counts
        }
        return results[0]
    }

    func testASteadyStepAllocatesNoTensorStorage() throws {
        for name in ObjectiveRegistry.builtIn.map({ ObjectiveName(rawValue: $0.name) }) {
            let counts = try allocations(objective: name)
            print("allocations per step, \(name): \(counts)")
            XCTAssertEqual(counts.suffix(2), [0, 0], "\(name) allocates tensor storage in steady steps: \(counts)")
        }
    }

    /// A ResNet encoder (Winograd and im2col convolutions, batch norm of images, residual
    /// sums, global pooling) and a convnet (average pooling) allocate nothing in steady steps
    /// either, on one rank and on two.
    func testASteadyConvolutionalStepAllocatesNoTensorStorage() throws {
        let resnet = NetworkDescription.resnet(ResNetDescription(inputChannels: 3, imageSize: 8, stemChannels: 8,
                                                                 stemStride: 2, stageChannels: [8, 16], blocksPerStage: 1))
        let convnet = NetworkDescription.convnet(ConvNetDescription(inputChannels: 1, imageSize: 8, channels: [4, 8]))
        for (network, width, label) in [(resnet, 16, "resnet"), (convnet, 8, "convnet")] {
            for ranks in [1, 2] {
                let counts = try allocations(objective: .vicreg, ranks: ranks, network: network, projector: [width, 32, 32])
                print("allocations per step, \(label) on \(ranks) rank(s): \(counts)")
                XCTAssertEqual(counts.suffix(2), [0, 0], "\(label) on \(ranks) rank(s) allocates in steady steps: \(counts)")
            }
        }
    }
}
