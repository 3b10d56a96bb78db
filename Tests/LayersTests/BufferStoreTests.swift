import Layers
import Tensor
import XCTest

/// Running statistics live in a store without gradients, laid out like the parameters.
final class BufferStoreTests: XCTestCase {
    func testBatchNormRunningStatisticsLiveInABufferStoreWithoutGradients() throws {
        let model = try Model<Float>(ModelDescription(encoder: .mlp(widths: [6, 8, 4]), projector: .mlp(widths: [4, 5, 3])),
                                     seed: 2)
        let bufferNames = model.buffers.entries.map(\.name)
        XCTAssertEqual(bufferNames.filter { $0.hasSuffix("running_mean") }.count, 2, "\(bufferNames)")
        XCTAssertEqual(model.buffers.count, model.buffers.entries.reduce(0) { $0 + $1.count })
        // The gradient buffer covers the parameters only: no running statistic is all-reduced.
        XCTAssertEqual(model.parameters.gradients.count, model.parameters.count)
        XCTAssertTrue(model.parameters.entries.allSatisfy { !$0.name.contains("running") })
        let name = try XCTUnwrap(bufferNames.first { $0.hasSuffix("running_var") })
        XCTAssertEqual(model.buffers.value(name).scalars, [Float](repeating: 1, count: model.buffers.value(name).count))

        // A training forward updates the buffers in place through the layers' views.
        let before = model.buffers.values.scalars
        let input = Tensor<Float>(shape: [10, 6], scalars: (0..<60).map { Float($0 % 7) - 3 })
        _ = try model.forward(input, context: LayerContext(training: true))
        XCTAssertNotEqual(model.buffers.values.scalars, before)
    }

    func testLayoutViewsAreTheNamedRangesOfTheFlatBuffer() {
        let store = BufferStore<Double>(specs: [
            ParameterSpec(name: "a", shape: [2, 3], role: .normalization, initializer: .zeros),
            ParameterSpec(name: "b", shape: [4], role: .normalization, initializer: .ones),
        ])
        XCTAssertEqual(store.count, 10)
        XCTAssertEqual(store.values.scalars, [0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
        store.value("a").fill(5)
        XCTAssertEqual(store.values.scalars, [5, 5, 5, 5, 5, 5, 1, 1, 1, 1])
        XCTAssertEqual(store.entry(named: "b")?.offset, 6)
        XCTAssertNil(store.entry(named: "c"))
    }
}
