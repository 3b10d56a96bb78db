import Layers
import XCTest
import _TestSupport

/// Finite-difference gradient checks in `Double`.
///
/// The loss is a random linear functional of the output summed over ranks,
/// `L = Σ_ranks ⟨w_rank, f(x)_rank⟩`, whose output gradient is `w`. Each checked coordinate `θ`
/// gets the central difference `(L(θ + h) − L(θ − h)) / 2h`, compared with the backward pass
/// (input gradients: the owning rank's; parameter gradients: summed over ranks, as the trainer
/// all-reduces them). Every rank runs every forward (the collectives need all ranks); an input
/// coordinate is perturbed on its owning rank only, a parameter on all ranks alike.
enum GradientCheck {
    /// The error `‖analytic − numeric‖ / max(‖numeric‖, 1)` per checked tensor: `input` and
    /// each parameter's name.
    typealias Errors = [String: Double]

    /// A network under test: forward and backward of one slot.
    struct Network {
        var forward: (Tensor<Double>, LayerContext) throws -> Tensor<Double>
        var backward: (Tensor<Double>, LayerContext) throws -> Tensor<Double>
        var parameters: ParameterStore<Double>
    }

    /// A layer with its parameters allocated and set to random values (so that γ = 1, β = 0 do
    /// not hide mistakes).
    static func network(_ layer: any Layer<Double>, seed: UInt64 = 11) -> Network {
        let parameters = ParameterStore<Double>(specs: layer.parameterSpecs(), seed: seed)
        let buffers = BufferStore<Double>(specs: layer.bufferSpecs(), seed: seed)
        if parameters.count > 0 { CounterRandom(seed: seed, stream: 99).fillNormal(parameters.values, mean: 0.3) }
        layer.bind(parameters: parameters, buffers: buffers, prefix: "")
        return Network(forward: { try layer.forward($0, context: $1) },
                       backward: { try layer.backward($0, context: $1) }, parameters: parameters)
    }

    /// A model as a network.
    static func network(_ model: Model<Double>) -> Network {
        Network(forward: { try model.forward($0, context: $1).last },
                backward: { try model.backward($0, context: $1) }, parameters: model.parameters)
    }

    /// Checks `network` at this rank's `input`; call on every rank.
    ///
    /// - Parameters:
    ///   - maximumCoordinates: at most this many coordinates of each tensor are checked
    ///     (evenly spaced), to keep the test fast.
    static func errors(_ network: Network, input: Tensor<Double>, context: LayerContext,
                       step h: Double = 1e-6, maximumCoordinates: Int = 40) throws -> Errors {
        let communicator = context.communicator
        // Analytic gradients.
        let output = try network.forward(input, context)
        let weights = Tensor<Double>(zeros: output.shape)
        CounterRandom(seed: 5, stream: UInt64(100 + communicator.rank)).fillNormal(weights)
        network.parameters.zeroGradients()
        let inputGradient = try network.backward(weights, context).copy()
        var parameterGradients = network.parameters.gradients.scalars
        try communicator.allReduce(&parameterGradients, .sum)

        func loss() throws -> Double {
            try communicator.allReduce(try network.forward(input, context).dot(weights), .sum)
        }
        func centralDifference(_ tensor: Tensor<Double>, _ index: Int, perturb: Bool) throws -> Double {
            let original = perturb ? tensor[flat: index] : 0
            if perturb { tensor[flat: index] = original + h }
            let plus = try loss()
            if perturb { tensor[flat: index] = original - h }
            let minus = try loss()
            if perturb { tensor[flat: index] = original }
            return (plus - minus) / (2 * h)
        }
        func sampled(_ count: Int) -> [Int] {
            count <= maximumCoordinates ? Array(0..<count)
                : (0..<maximumCoordinates).map { $0 * count / maximumCoordinates }
        }

        var errors: Errors = [:]
        // Input: the coordinates of each rank in turn.
        let counts = try communicator.allGather([Int64(input.count)])
        var squares = [0.0, 0.0]   // ‖analytic − numeric‖², ‖numeric‖² over this rank's coordinates
        for (owner, count) in counts.enumerated() {
            for index in sampled(Int(count)) {
                let mine = owner == communicator.rank
                let numeric = try centralDifference(input, index, perturb: mine)
                if mine {
                    let difference = inputGradient[flat: index] - numeric
                    squares[0] += difference * difference
                    squares[1] += numeric * numeric
                }
            }
        }
        try communicator.allReduce(&squares, .sum)
        errors["input"] = relativeError(squares)
        // Parameters: perturbed identically on every rank.
        for entry in network.parameters.entries {
            let value = network.parameters.view(of: network.parameters.values, entry)
            var squares = [0.0, 0.0]
            for index in sampled(entry.count) {
                let numeric = try centralDifference(value, index, perturb: true)
                let difference = parameterGradients[entry.offset + index] - numeric
                squares[0] += difference * difference
                squares[1] += numeric * numeric
            }
            errors[entry.name] = relativeError(squares)
        }
        return errors
    }

    /// `‖analytic − numeric‖ / max(‖numeric‖, 1)`: relative for gradients of norm above 1,
    /// absolute below, so that gradients that vanish exactly (the bias of a linear layer before
    /// batch norm) compare their round-off noise with 1 rather than with itself.
    private static func relativeError(_ squares: [Double]) -> Double {
        (squares[0] / max(squares[1], 1)).squareRoot()
    }

    /// Asserts that every error is at most `tolerance` and returns the worst (for the report).
    @discardableResult
    static func assertSmall(_ errors: Errors, below tolerance: Double = 1e-6, _ label: String,
                            file: StaticString = #filePath, line: UInt = #line) -> Double {
        XCTAssertFalse(errors.isEmpty, "\(label): nothing checked", file: file, line: line)
        for (name, error) in errors.sorted(by: { $0.key < $1.key }) {
            XCTAssertLessThanOrEqual(error, tolerance, "\(label): gradient of \(name)", file: file, line: line)
        }
        let worst = errors.values.max() ?? 0
        if ProcessInfo.processInfo.environment["LAYERS_REPORT_FD"] != nil {
            print("FD \(label): worst relative error \(worst)")
        }
        return worst
    }
}
