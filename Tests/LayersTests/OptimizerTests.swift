import XCTest
import Layers
import Optimizers
import _TestSupport

/// Three steps of each optimizer on a tiny store — a 2×2 weight `w`, a bias `b` and a
/// normalisation scale `gamma`, flat `[w₀₀ w₀₁ w₁₀ w₁₁ b₀ b₁ γ₀ γ₁]` — against values computed by
/// hand-written Python transcriptions of PyTorch's `SGD`/`AdamW` and VICReg's `LARS` (in Double).
/// Every check runs for `Double` (tight) and `Float` (to Float rounding).
final class OptimizerTests: XCTestCase {
    // MARK: Fixture

    static let initialValues: [Double] = [0.5, -1.0, 1.5, 2.0, 0.1, -0.2, 1.0, 1.0]
    /// The gradients of steps 1, 2, 3.
    static let gradients: [[Double]] = [
        [0.1, -0.2, 0.3, 0.4, 0.05, -0.1, 0.2, -0.3],
        [-0.3, 0.1, 0.2, -0.1, 0.02, 0.3, -0.1, 0.1],
        [0.2, 0.2, -0.4, 0.05, -0.2, 0.1, 0.3, 0.05],
    ]

    static func makeStore<Scalar: TensorScalar>(_: Scalar.Type, values: [Double] = initialValues) -> ParameterStore<Scalar> {
        let store = ParameterStore<Scalar>(specs: [
            ParameterSpec(name: "w", shape: [2, 2], role: .weight, initializer: .zeros),
            ParameterSpec(name: "b", shape: [2], role: .bias, initializer: .zeros),
            ParameterSpec(name: "gamma", shape: [2], role: .normalization, initializer: .zeros),
        ], seed: 0)
        store.values.copy(from: Tensor(shape: [store.count], scalars: values.map { Scalar($0) }))
        return store
    }

    static func setGradients<Scalar: TensorScalar>(_ store: ParameterStore<Scalar>, step: Int) {
        store.gradients.copy(from: Tensor(shape: [store.count], scalars: gradients[step].map { Scalar($0) }))
    }

    /// Runs three steps, checking the parameters after each against `expected`.
    func assertSteps<O: Optimizer>(_ optimizer: O, _ expected: [[Double]], _ label: String,
                                   file: StaticString = #filePath, line: UInt = #line) {
        let isFloat = O.Scalar.self == Float.self
        for (t, row) in expected.enumerated() {
            Self.setGradients(optimizer.parameters, step: t)
            let gradientsBefore = optimizer.parameters.gradients.scalars
            optimizer.step()
            XCTAssertEqual(optimizer.stepCount, t + 1, file: file, line: line)
            assertClose(optimizer.parameters.values.scalars, row, rtol: isFloat ? 2e-6 : 1e-13, atol: isFloat ? 1e-6 : 1e-15,
                        "\(label) \(O.Scalar.self) step \(t + 1)", file: file, line: line)
            XCTAssertEqual(optimizer.parameters.gradients.scalars, gradientsBefore, "\(label) wrote the gradients",
                           file: file, line: line)
        }
    }

    // MARK: SGD

    func testSGDMomentum() throws {
        func check<S: TensorScalar>(_: S.Type) throws {
            // Step 1 by hand: b = g, p − 0.1 g, e.g. w₀₀ = 0.5 − 0.1 · 0.1 = 0.49.
            // Step 2: b = 0.9 · 0.1 − 0.3 = −0.21, w₀₀ = 0.49 + 0.021 = 0.511.
            assertSteps(try SGD(parameters: Self.makeStore(S.self), learningRate: 0.1, momentum: 0.9), [
                [0.49, -0.98, 1.47, 1.96, 0.095, -0.19, 0.98, 1.03],
                [0.511, -0.972, 1.423, 1.934, 0.0885, -0.211, 0.972, 1.047],
                [0.5099, -0.9848, 1.4207, 1.9056, 0.10265, -0.2399, 0.9348, 1.0573],
            ], "SGD momentum")
        }
        try check(Double.self)
        try check(Float.self)
    }

    func testSGDNesterovWithWeightDecay() throws {
        func check<S: TensorScalar>(_: S.Type) throws {
            // Step 1 by hand: d = g + 0.01 p, b = d, d = d + 0.9 b = 1.9 d;
            // w₀₀: d = 0.105, p = 0.5 − 0.1 · 1.9 · 0.105 = 0.48005.
            assertSteps(try SGD(parameters: Self.makeStore(S.self), learningRate: 0.1, momentum: 0.9,
                                weightDecay: 0.01, nesterov: true), [
                [0.48005, -0.9601, 1.44015, 1.9202, 0.09031, -0.18062, 0.9601, 1.0551],
                [0.527632905, -0.96026581, 1.373898715, 1.90153162, 0.082207411, -0.229014822, 0.96026581, 1.05758531],
                [0.5048870619805, -0.988454623961, 1.4069582859415, 1.864345347922, 0.1146401658191, -0.2642975916382,
                 0.893454623961, 1.0582622669110],
            ], "SGD Nesterov")
        }
        try check(Double.self)
        try check(Float.self)
    }

    func testPlainSGDWithCoupledWeightDecay() throws {
        func check<S: TensorScalar>(_: S.Type) throws {
            // momentum 0: p = p − lr (g + wd p); w₀₀ = 0.5 − 0.1 (0.1 + 0.05) = 0.485.
            assertSteps(try SGD(parameters: Self.makeStore(S.self), learningRate: 0.1, weightDecay: 0.1), [
                [0.485, -0.97, 1.455, 1.94, 0.094, -0.188, 0.97, 1.02],
                [0.51015, -0.9703, 1.42045, 1.9306, 0.09106, -0.21612, 0.9703, 0.9998],
                [0.4850485, -0.980597, 1.4462455, 1.906294, 0.1101494, -0.2239588, 0.930597, 0.984802],
            ], "plain SGD")
        }
        try check(Double.self)
        try check(Float.self)
    }

    func testSGDExcludingBiasAndNormalizationFromWeightDecay() throws {
        // Weights decay; b and gamma follow the undecayed momentum run of testSGDMomentum.
        assertSteps(try SGD(parameters: Self.makeStore(Double.self), learningRate: 0.1, momentum: 0.9, weightDecay: 0.1,
                            excludeBiasAndNormalization: true), [
            [0.485, -0.97, 1.455, 1.94, 0.095, -0.19, 0.98, 1.03],
            [0.49665, -0.9433, 1.37995, 1.8766, 0.0885, -0.211, 0.972, 1.047],
            [0.4821685, -0.929837, 1.3386055, 1.795774, 0.10265, -0.2399, 0.9348, 1.0573],
        ], "SGD exclude")
    }

    func testSGDRejectsInvalidHyperparameters() {
        let store = Self.makeStore(Double.self)
        XCTAssertThrowsError(try SGD(parameters: store, learningRate: -1))
        XCTAssertThrowsError(try SGD(parameters: store, learningRate: 0.1, momentum: 1))
        XCTAssertThrowsError(try SGD(parameters: store, learningRate: 0.1, nesterov: true))
        XCTAssertThrowsError(try SGD(parameters: store, learningRate: 0.1, weightDecay: -0.1))
    }

    // MARK: AdamW

    func testAdamWBiasCorrectedFirstStepIsSignOfGradient() throws {
        func check<S: TensorScalar>(_: S.Type) throws {
            // Step 1: m̂ = g, √v̂ = |g|, so p = p − lr · g / (|g| + eps) ≈ p − lr · sign(g).
            assertSteps(try AdamW(parameters: Self.makeStore(S.self), learningRate: 0.01, weightDecay: 0), [
                [0.490000001, -0.9900000005, 1.4900000003333334, 1.99000000025, 0.09000000199999961,
                 -0.19000000099999992, 0.9900000005, 1.0099999996666666],
                [0.49494189911200653, -0.9873366302718677, 1.4802964794330102, 1.9853053186989829, 0.08101425231447329,
                 -0.19494189911200657, 0.9873366302718677, 1.0140021852071919],
                [0.4947540221765934, -0.9900635980238934, 1.480023539108466, 1.980932982651149, 0.08537869940322135,
                 -0.20051109978152903, 0.9809834287324742, 1.0160592696554867],
            ], "Adam")
        }
        try check(Double.self)
        try check(Float.self)
    }

    func testAdamWDecoupledWeightDecayAndMoments() throws {
        func check<S: TensorScalar>(_: S.Type) throws {
            // Step 1: p (1 − 0.01 · 0.1) − 0.01 · g / (|g| + eps); w₀₀ = 0.4995 − 0.0099999999 = 0.4895000001.
            let adamw = try AdamW(parameters: Self.makeStore(S.self), learningRate: 0.01, weightDecay: 0.1)
            XCTAssertEqual(adamw.slotNames, ["exp_avg", "exp_avg_sq"])
            assertSteps(adamw, [
                [0.4895000009999999, -0.9890000004999999, 1.4885000003333333, 1.98800000025, 0.0899000019999996,
                 -0.1898000009999999, 0.9890000004999999, 1.0089999996666668],
                [0.4939523991110065, -0.9853476302713676, 1.4773079794326769, 1.981317318698733, 0.08082435231247329,
                 -0.19455209911100657, 0.9853476302713676, 1.0119931852075252],
                [0.4932705697764824, -0.987089250393122, 1.4755577311287, 1.9749636653322005, 0.08510797504890887,
                 -0.19992674768141802, 0.9780090811017028, 1.0130382764706125],
            ], "AdamW")
            // m = Σ 0.1 · 0.9^(3−t) g_t; v = Σ 0.001 · 0.999^(3−t) g_t².
            let isFloat = S.self == Float.self
            assertClose(adamw.slot("exp_avg").scalars, [0.0011, 0.0128, 0.0023, 0.0284, -0.01415, 0.0289, 0.0372, -0.0103],
                        rtol: isFloat ? 1e-5 : 1e-12, atol: 1e-9)
            assertClose(adamw.slot("exp_avg_sq").scalars,
                        [0.00013989001, 8.991004e-05, 0.00028978009, 0.00017217016, 4.28946025e-05, 0.00010989001,
                         0.00013991004, 0.00010231009], rtol: isFloat ? 1e-5 : 1e-12)
        }
        try check(Double.self)
        try check(Float.self)
    }

    func testAdamWResumesFromSavedSlotsAndStepCount() throws {
        // Two steps, save (slots + step count + values), restore into a new optimizer, one more
        // step on both: identical, bit for bit. Restoring without the step count would change the
        // bias correction and the result.
        let original = try AdamW(parameters: Self.makeStore(Float.self), learningRate: 0.01, weightDecay: 0.1)
        for t in 0..<2 { Self.setGradients(original.parameters, step: t); original.step() }
        let resumed = try AdamW(parameters: Self.makeStore(Float.self), learningRate: 0.01, weightDecay: 0.1)
        resumed.parameters.values.copy(from: original.parameters.values)
        for name in original.slotNames {
            for entry in original.parameters.entries {
                let saved = original.slot(name, for: entry.name)
                XCTAssertEqual(saved.shape, entry.shape)
                resumed.slot(name, for: entry.name).copy(from: saved)
            }
        }
        resumed.stepCount = original.stepCount
        for optimizer in [original, resumed] { Self.setGradients(optimizer.parameters, step: 2); optimizer.step() }
        XCTAssertEqual(resumed.parameters.values.scalars, original.parameters.values.scalars)

        let forgetful = try AdamW(parameters: Self.makeStore(Float.self), learningRate: 0.01, weightDecay: 0.1)
        forgetful.parameters.values.copy(from: resumed.parameters.values)
        for name in forgetful.slotNames { forgetful.slot(name).copy(from: resumed.slot(name)) }
        resumed.step(); forgetful.step()
        XCTAssertNotEqual(forgetful.parameters.values.scalars, resumed.parameters.values.scalars)

        resumed.resetState()
        XCTAssertEqual(resumed.stepCount, 0)
        XCTAssertEqual(resumed.slot("exp_avg").maxAbs(), 0)
    }

    // MARK: LARS

    func testLARSMatchesVICRegReference() throws {
        func check<S: TensorScalar>(_: S.Type) throws {
            // Step 1 by hand for w (g = 0.2 p): d = g + 0.1 p = 0.3 p = [0.15, −0.3, 0.45, 0.6],
            // ‖p‖ = √7.5, ‖d‖ = √0.675, q = 0.001 · √(7.5 / 0.675) = 1/300, so
            // p − 0.5 · d / 300 = [0.49975, −0.9995, 1.49925, 1.999].
            // b, gamma: mu = g, p − 0.5 g (no decay, no adaptation): b₀ = 0.1 − 0.025 = 0.075.
            let lars = try LARS(parameters: Self.makeStore(S.self), learningRate: 0.5, weightDecay: 0.1)
            XCTAssertEqual(lars.momentum, 0.9)
            XCTAssertEqual(lars.eta, 0.001)
            assertSteps(lars, [
                [0.49975, -0.9995, 1.49925, 1.999, 0.075, -0.15, 0.9, 1.15],
                [0.5003000261722877, -0.9990501549897355, 1.4974903043362153, 1.9977903305085032, 0.0425, -0.255, 0.86,
                 1.235],
                [0.5000256806461868, -0.9989532974619323, 1.4966766272589238, 1.9959330311452155, 0.11325, -0.3995, 0.674,
                 1.2865],
            ], "LARS")
            assertClose(lars.slot("mu").scalars,
                        [0.0005486910522019459, -0.00019371505560645055, 0.001627354154583177, 0.0037145987265755206,
                         -0.1415, 0.289, 0.372, -0.103], rtol: S.self == Float.self ? 1e-4 : 1e-12)
        }
        try check(Double.self)
        try check(Float.self)
    }

    func testLARSLeavesBiasAndNormalizationUnadaptedAndUndecayed() throws {
        // Whatever eta and weight decay, b and gamma follow momentum SGD on the raw gradient
        // (mu = 0.9 mu + g, p = p − lr mu), while w changes with eta.
        var weightRuns: [[Double]] = []
        for (eta, weightDecay) in [(0.001, 0.1), (0.02, 0.1), (0.02, 10.0)] {
            let lars = try LARS(parameters: Self.makeStore(Double.self), learningRate: 0.5, weightDecay: weightDecay,
                                eta: eta)
            var mu = [Double](repeating: 0, count: 4)
            var expected = Array(Self.initialValues[4...])
            for t in 0..<3 {
                Self.setGradients(lars.parameters, step: t)
                lars.step()
                for i in 0..<4 {
                    mu[i] = 0.9 * mu[i] + Self.gradients[t][4 + i]
                    expected[i] -= 0.5 * mu[i]
                }
                assertClose(lars.parameters.value("b").scalars + lars.parameters.value("gamma").scalars, expected,
                            rtol: 1e-14, atol: 1e-15)
            }
            weightRuns.append(lars.parameters.value("w").scalars)
        }
        XCTAssertNotEqual(weightRuns[0], weightRuns[1])
        XCTAssertNotEqual(weightRuns[1], weightRuns[2])
        XCTAssertTrue(LARS<Float>.isAdapted(.weight))
        XCTAssertFalse(LARS<Float>.isAdapted(.bias))
        XCTAssertFalse(LARS<Float>.isAdapted(.normalization))
    }

    func testLARSTrustRatioScalesWeightUpdateToEtaTimesParameterNorm() throws {
        // With momentum 0, one step moves a weight by lr · q · d with ‖q · d‖ = eta · ‖p‖,
        // whatever the size of the gradient.
        for gradientScale in [1e-3, 1.0, 1e3] {
            let lars = try LARS(parameters: Self.makeStore(Double.self), learningRate: 1, weightDecay: 0.1, momentum: 0,
                                eta: 0.02)
            let before = lars.parameters.value("w").copy()
            Self.setGradients(lars.parameters, step: 0)
            lars.parameters.gradients.scale(by: gradientScale)
            lars.step()
            let moved = lars.parameters.value("w").copy()
            moved.add(before, scaledBy: -1)
            assertClose(moved.squaredNorm().squareRoot(), 0.02 * before.squaredNorm().squareRoot(), rtol: 1e-12)
        }
        // ‖p‖ = 0: q = 1, the update is the plain (decayed) gradient.
        let zeroWeights = try LARS(parameters: Self.makeStore(Double.self, values: [0, 0, 0, 0, 0.1, -0.2, 1, 1]),
                                   learningRate: 1, weightDecay: 0.1, momentum: 0)
        Self.setGradients(zeroWeights.parameters, step: 0)
        zeroWeights.step()
        assertClose(zeroWeights.parameters.value("w").scalars, [-0.1, 0.2, -0.3, -0.4], rtol: 1e-15)
        // ‖d‖ = 0: q = 1 and nothing moves.
        let zeroGradient = try LARS(parameters: Self.makeStore(Double.self), learningRate: 1, momentum: 0)
        zeroGradient.step()
        XCTAssertEqual(zeroGradient.parameters.values.scalars, Self.initialValues)
    }

    func testLARSExcludedLearningRateFactorScalesBiasAndNormalizationOnly() throws {
        let reference = try LARS(parameters: Self.makeStore(Double.self), learningRate: 0.5, weightDecay: 0.1)
        let barlow = try LARS(parameters: Self.makeStore(Double.self), learningRate: 0.5, weightDecay: 0.1,
                              excludedLearningRateFactor: 0.024)
        for optimizer in [reference, barlow] { Self.setGradients(optimizer.parameters, step: 0); optimizer.step() }
        XCTAssertEqual(barlow.parameters.value("w").scalars, reference.parameters.value("w").scalars)
        assertClose(barlow.parameters.value("b").scalars, [0.1 - 0.012 * 0.05, -0.2 + 0.012 * 0.1], rtol: 1e-14)
    }

    func testSlotsAreFlatBuffersInTheStoreLayout() throws {
        let store = Self.makeStore(Float.self)
        let optimizers: [(any Optimizer, [String])] = [
            (try SGD(parameters: store, learningRate: 0.1, momentum: 0.9), ["momentum_buffer"]),
            (try AdamW(parameters: store), ["exp_avg", "exp_avg_sq"]),
            (try LARS(parameters: store), ["mu"]),
        ]
        for (optimizer, names) in optimizers {
            XCTAssertEqual(optimizer.slotNames, names)
            for name in names {
                XCTAssertEqual(slotShape(optimizer, name), [store.count])
            }
        }
    }

    private func slotShape<O: Optimizer>(_ optimizer: O, _ name: String) -> [Int] { optimizer.slot(name).shape }

    // MARK: Clipping

    func testClipGradientNormUsesTheGlobalNormOverAllParameters() {
        let store = Self.makeStore(Float.self)
        // ‖w‖ = 5, ‖b‖ = 12, ‖gamma‖ = 0: global norm 13 (per-parameter norms would clip differently).
        store.gradients.copy(from: Tensor(shape: [8], scalars: [3, 0, 0, 4, 12, 0, 0, 0]))
        XCTAssertEqual(store.gradientNorm(), 13)
        XCTAssertEqual(store.clipGradientNorm(maxNorm: 100), 13)
        XCTAssertEqual(store.gradients.scalars, [3, 0, 0, 4, 12, 0, 0, 0], "below the maximum: untouched")
        XCTAssertEqual(store.clipGradientNorm(maxNorm: 6.5), 13)
        assertClose(store.gradientNorm(), 6.5, rtol: 1e-6)
        assertClose(store.gradients.scalars, [1.5, 0, 0, 2, 6, 0, 0, 0], rtol: 1e-6)
        // A non-finite norm is reported and the gradients are left for the caller to skip the step.
        store.gradients[flat: 7] = .infinity
        XCTAssertEqual(store.clipGradientNorm(maxNorm: 1), .infinity)
        XCTAssertEqual(store.gradients[flat: 4], 6, accuracy: 1e-5)
    }
}
