import Foundation
import Layers
import XCTest
import _TestSupport

/// The ViT encoder and the conditioned predictor stack against an independent float64 PyTorch
/// implementation (`Fixtures/make_vit_fixture.py`, run once; its output
/// `Fixtures/vit_reference.json` is committed, so the suite does not need Python).
///
/// Both sides set every parameter by the same closed-form formula of its name and index,
/// run one forward on the same closed-form input, and differentiate `Σ output ⊙ w`; the test
/// compares the output, the input gradients and every parameter gradient in `Double`.
final class ViTReferenceTests: XCTestCase {
    private struct Case: Decodable {
        var config: [String: ConfigValue]
        var input_shape: [Int]
        var condition_shape: [Int]?
        var output_shape: [Int]
        var output: [Double]
        var input_gradients: [[Double]]
        var parameter_gradients: [String: [Double]]
    }

    private enum ConfigValue: Decodable {
        case number(Double), text(String)
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let number = try? c.decode(Double.self) { self = .number(number) } else { self = .text(try c.decode(String.self)) }
        }
        var int: Int { if case let .number(n) = self { return Int(n) }; return -1 }
        var double: Double { if case let .number(n) = self { return n }; return .nan }
        var text: String { if case let .text(t) = self { return t }; return "" }
    }

    private static let cases: [String: Case] = {
        let url = Bundle.module.url(forResource: "Fixtures/vit_reference", withExtension: "json")!
        let object = try! JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        var cases: [String: Case] = [:]
        for (key, value) in object where value is [String: Any] {
            cases[key] = try! JSONDecoder().decode(Case.self, from: JSONSerialization.data(withJSONObject: value))
        }
        return cases
    }()

    /// The fixture's formulas (see the script).
    static func parameterValue(_ name: String, _ i: Int) -> Double {
        let phase = Double(name.utf8.reduce(0) { $0 + Int($1) } % 101) * 0.05
        return 0.4 * Foundation.sin(0.9 * Double(i) + phase)
    }
    static func sequence(_ shape: [Int], a: Double = 0.5, b: Double = 1.7) -> Tensor<Double> {
        let count = shape.reduce(1, *)
        return Tensor(shape: shape, scalars: (0..<count).map { Foundation.sin(a * Double($0)) + 0.1 * Foundation.cos(b * Double($0)) })
    }
    static func lossWeights(_ shape: [Int]) -> Tensor<Double> {
        Tensor(shape: shape, scalars: (0..<shape.reduce(1, *)).map { Foundation.cos(0.3 * Double($0)) })
    }

    /// Sets every parameter of `store` named `prefix + name` by the formula of `name`, and checks
    /// that the store and the reference hold the same names.
    private func setParameters(_ store: ParameterStore<Double>, prefix: String, reference: Case,
                               file: StaticString = #filePath, line: UInt = #line) {
        let names = store.entries.map { String($0.name.dropFirst(prefix.count)) }
        XCTAssertEqual(Set(names), Set(reference.parameter_gradients.keys), "parameter names", file: file, line: line)
        for (entry, name) in zip(store.entries, names) {
            let value = store.value(entry.name)
            for i in 0..<entry.count { value[flat: i] = Self.parameterValue(name, i) }
        }
    }

    /// Compares gradients parameter by parameter; returns the worst relative error.
    private func compareGradients(_ store: ParameterStore<Double>, prefix: String, reference: Case, label: String,
                                  file: StaticString = #filePath, line: UInt = #line) -> Double {
        var worst = 0.0
        for entry in store.entries {
            let name = String(entry.name.dropFirst(prefix.count))
            guard let expected = reference.parameter_gradients[name] else { continue }
            let actual = store.gradient(entry.name).scalars
            assertClose(actual, expected, rtol: 1e-9, atol: 1e-11, "\(label): gradient of \(name)", file: file, line: line)
            worst = max(worst, relativeNormError(actual, expected))
        }
        return worst
    }

    private func report(_ label: String, _ errors: [String: Double]) {
        if ProcessInfo.processInfo.environment["LAYERS_REPORT_FD"] != nil {
            print("REFERENCE \(label): " + errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
    }

    func testViTMatchesPyTorch() throws {
        for pooling in ["cls", "mean"] {
            let reference = try XCTUnwrap(Self.cases["vit_\(pooling)"])
            let c = reference.config
            let description = ViTDescription(inputChannels: c["inputChannels"]!.int, imageSize: c["imageSize"]!.int,
                                             patchSize: c["patchSize"]!.int, width: c["width"]!.int, depth: c["depth"]!.int,
                                             heads: c["heads"]!.int, mlpRatio: c["mlpRatio"]!.double,
                                             pooling: TokenPoolingMode(rawValue: c["pooling"]!.text)!)
            let model = try Model<Double>(ModelDescription(encoder: .vit(description)), seed: 0)
            setParameters(model.parameters, prefix: "encoder.0.", reference: reference)
            let input = Self.sequence(reference.input_shape)
            let context = LayerContext(training: true)
            let output = try model.forward(input, context: context).representation
            XCTAssertEqual(output.shape, reference.output_shape)
            assertClose(output.scalars, reference.output, rtol: 1e-10, atol: 1e-12, "ViT \(pooling) output")
            model.parameters.zeroGradients()
            let inputGradient = try model.backward(Self.lossWeights(output.shape), context: context)
            assertClose(inputGradient.scalars, reference.input_gradients[0], rtol: 1e-9, atol: 1e-11, "ViT \(pooling) input gradient")
            let worst = compareGradients(model.parameters, prefix: "encoder.0.", reference: reference, label: "ViT \(pooling)")
            report("ViT \(pooling)", ["output": relativeNormError(output.scalars, reference.output),
                                      "input gradient": relativeNormError(inputGradient.scalars, reference.input_gradients[0]),
                                      "worst parameter gradient": worst])
        }
    }

    func testConditionedPredictorMatchesPyTorch() throws {
        let reference = try XCTUnwrap(Self.cases["predictor"])
        let c = reference.config
        let stack = ConditionedTransformer<Double>(features: c["features"]!.int, conditionFeatures: c["conditionFeatures"]!.int,
                                                   outputFeatures: c["outputFeatures"]!.int, maxTokens: c["maxTokens"]!.int,
                                                   depth: c["depth"]!.int, heads: c["heads"]!.int, mlpRatio: c["mlpRatio"]!.double)
        let parameters = ParameterStore<Double>(specs: stack.parameterSpecs(), seed: 0)
        stack.bind(parameters: parameters, buffers: BufferStore.empty, prefix: "")
        setParameters(parameters, prefix: "", reference: reference)
        let tokens = Self.sequence(reference.input_shape)
        let conditions = Self.sequence(try XCTUnwrap(reference.condition_shape), a: 0.8, b: 0.4)
        let context = LayerContext(training: true)
        let output = try stack.forward(tokens, condition: conditions, context: context)
        XCTAssertEqual(output.shape, reference.output_shape)
        assertClose(output.scalars, reference.output, rtol: 1e-10, atol: 1e-12, "predictor output")
        let (tokenGradient, conditionGradient) = try stack.backward(Self.lossWeights(output.shape), context: context)
        assertClose(tokenGradient.scalars, reference.input_gradients[0], rtol: 1e-9, atol: 1e-11, "predictor token gradient")
        assertClose(conditionGradient.scalars, reference.input_gradients[1], rtol: 1e-9, atol: 1e-11, "predictor condition gradient")
        let worst = compareGradients(parameters, prefix: "", reference: reference, label: "predictor")
        report("predictor", ["output": relativeNormError(output.scalars, reference.output),
                             "token gradient": relativeNormError(tokenGradient.scalars, reference.input_gradients[0]),
                             "condition gradient": relativeNormError(conditionGradient.scalars, reference.input_gradients[1]),
                             "worst parameter gradient": worst])
    }
}
