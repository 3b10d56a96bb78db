import Layers
import XCTest
import _TestSupport

/// The `Float` kernels of the smooth activations and of attention: the `erf` and `exp`
/// approximations within their stated errors, the `Float` GELU and SiLU against the `Double`
/// layers (libm), and attention's (sample, head) pairs and layer norm's rows split over threads
/// giving the serial result bit for bit.
final class ActivationKernelTests: XCTestCase {
    func testRationalErfAndPolynomialExpStayWithinTheirStatedErrors() {
        var worstErf = 0.0, worstExp = 0.0
        for i in -60_000...60_000 {
            let x = Float(i) * 1e-4
            worstErf = max(worstErf, abs(Double(Float.rationalErf(x)) - Double.erf(Double(x))))
        }
        for i in -86_900...87_900 {   // inside the clamp: Float(−87_000) · 1e-3 is −87.00001
            let x = Float(i) * 1e-3
            let exact = Double.exp(Double(x))
            worstExp = max(worstExp, abs(Double(Float.polynomialExp(x)) - exact) / exact)
        }
        XCTAssertLessThan(worstErf, 4.5e-7, "erf on [−6, 6]")
        XCTAssertLessThan(worstExp, 1.2e-7, "exp on [−86.9, 87.9], relative")
        XCTAssertEqual(Float.rationalErf(30), 1)
        XCTAssertEqual(Float.rationalErf(-30), -1)
        XCTAssertEqual(Float.polynomialExp(0), 1)
        XCTAssertLessThan(Float.polynomialExp(-1_000), 2e-38)
    }

    func testFloatGELUAndSiLUFollowTheDoubleLayers() throws {
        let count = 40_000   // more than one part a thread: the split path runs too
        let input = Tensor<Double>(shape: [count], scalars: (0..<count).map { 12 * Double($0) / Double(count) - 6 })
        let outputGradient = randomTensor([count], seed: 4, as: Double.self)
        let context = LayerContext(training: true)
        for (name, single, double) in [("GELU", GELU<Float>() as any Layer<Float>, GELU<Double>() as any Layer<Double>),
                                       ("SiLU", SiLU<Float>(), SiLU<Double>())] {
            let y = try single.forward(input.converted(to: Float.self), context: context)
            let dx = try single.backward(outputGradient.converted(to: Float.self), context: context)
            let yReference = try double.forward(input, context: context)
            let dxReference = try double.backward(outputGradient, context: context)
            for i in 0..<count {
                XCTAssertEqual(Double(y[flat: i]), yReference[flat: i], accuracy: 2e-6 * max(1, abs(yReference[flat: i])),
                               "\(name)(\(input[flat: i]))")
                XCTAssertEqual(Double(dx[flat: i]), dxReference[flat: i], accuracy: 2e-6 * max(1, abs(dxReference[flat: i])),
                               "\(name)′(\(input[flat: i]))")
            }
        }
    }

    /// The `Float` loops run eight elements a vector and the rest one by one: both paths give
    /// every element the same bits (each value below goes through both), clamps and NaN included.
    func testVectorLanesAndScalarTailGiveTheSameBits() {
        var values: [Float] = [0, -0.0, 1e-30, -3.3, 3.9, 4, 4.5, -4, -4.5, 30, -30, 87.5, 88, 90, -86, -87, -100, .nan, .infinity, -.infinity]
        values += (0..<45).map { Float($0) * 0.37 - 8 }
        let count = values.count
        let dy = (0..<count).map { Float($0 % 7) - 3.25 }
        for kind in [SmoothActivation.gelu, .silu] {
            var vector = [Float](repeating: 0, count: count), vectorGradient = vector
            Float.activation(kind, values, into: &vector, count: count)
            Float.activationGradient(kind, values, dy, into: &vectorGradient, count: count)
            XCTAssertGreaterThan(count % 8, 0, "some elements take the scalar tail")
            for i in 0..<count {
                var one: Float = 0, oneGradient: Float = 0
                Float.activation(kind, [values[i]], into: &one, count: 1)
                Float.activationGradient(kind, [values[i]], [dy[i]], into: &oneGradient, count: 1)
                XCTAssertEqual(one.bitPattern, vector[i].bitPattern, "\(kind)(\(values[i]))")
                XCTAssertEqual(oneGradient.bitPattern, vectorGradient[i].bitPattern, "\(kind)′(\(values[i]))")
            }
        }
    }

    func testAttentionPairsSplitOverThreadsGiveTheSerialResult() throws {
        let saved = BLASThreads.count
        defer { BLASThreads.set(saved) }
        let context = LayerContext(training: true)
        let x = randomTensor([5, 7, 12], seed: 1, as: Float.self), memory = randomTensor([5, 3, 6], seed: 2, as: Float.self)
        let dy = randomTensor([5, 7, 12], seed: 3, as: Float.self)
        func run(threads: Int) throws -> [[Float]] {
            BLASThreads.set(threads)
            XCTAssertEqual(BLASThreads.count, threads)
            let attention = MultiHeadAttention<Float>(features: 12, heads: 3, causal: true)
            let cross = CrossAttention<Float>(features: 12, memoryFeatures: 6, heads: 3)
            let store = ParameterStore<Float>(specs: attention.parameterSpecs().map { $0.prefixed("a") }
                                                  + cross.parameterSpecs().map { $0.prefixed("c") }, seed: 7)
            attention.bind(parameters: store, buffers: BufferStore(specs: []), prefix: "a")
            cross.bind(parameters: store, buffers: BufferStore(specs: []), prefix: "c")
            let y = try attention.forward(x, context: context), dx = try attention.backward(dy, context: context)
            let z = try cross.forward(x, condition: memory, context: context)
            let (dz, dMemory) = try cross.backward(dy, context: context)
            return [y.scalars, dx.scalars, z.scalars, dz.scalars, dMemory.scalars, store.gradients.scalars]
        }
        // 7 × 7 × 4 products: on 2 BLAS threads the 15 (sample, head) pairs are split in two parts.
        let serial = try run(threads: 1), split = try run(threads: 2)
        for (a, b) in zip(serial, split) { XCTAssertEqual(a, b) }
    }

    func testLayerNormRowsSplitOverThreadsGiveTheSerialResult() throws {
        let saved = BLASThreads.count
        defer { BLASThreads.set(saved) }
        let context = LayerContext(training: true)
        // 1,000 rows: 8 blocks of 128 (the last one short), split in two parts on 2 threads.
        let x = randomTensor([10, 100, 37], seed: 1, as: Float.self), dy = randomTensor([10, 100, 37], seed: 2, as: Float.self)
        var gamma: [Float] = [], beta: [Float] = []
        func run(threads: Int) throws -> [[Float]] {
            BLASThreads.set(threads)
            XCTAssertEqual(BLASThreads.count, threads)
            let norm = LayerNorm<Float>(features: 37)
            let store = ParameterStore<Float>(specs: norm.parameterSpecs().map { $0.prefixed("n") }, seed: 7)
            norm.bind(parameters: store, buffers: BufferStore(specs: []), prefix: "n")
            store.values.withUnsafeMutableBufferPointer { values in
                for i in values.indices { values[i] = 1 + 0.01 * Float(i % 13) }   // γ and β: not 1 and 0
            }
            (gamma, beta) = (store.bound("n", "weight").value.scalars, store.bound("n", "bias").value.scalars)
            let y = try norm.forward(x, context: context), dx = try norm.backward(dy, context: context)
            return [y.scalars, dx.scalars, store.gradients.scalars]
        }
        let serial = try run(threads: 1), split = try run(threads: 2)
        for (a, b) in zip(serial, split) { XCTAssertEqual(a, b) }
        // and what both give is layer norm, computed here directly in Double for some rows
        for row in stride(from: 0, to: 1_000, by: 97) {
            let values = (0..<37).map { Double(x[flat: row * 37 + $0]) }
            let mean = values.reduce(0, +) / 37
            let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 37
            for j in 0..<37 {
                let expected = Double(gamma[j]) * (values[j] - mean) / (variance + 1e-5).squareRoot() + Double(beta[j])
                XCTAssertEqual(Double(serial[0][row * 37 + j]), expected, accuracy: 1e-5, "row \(row), feature \(j)")
            }
        }
    }
}
