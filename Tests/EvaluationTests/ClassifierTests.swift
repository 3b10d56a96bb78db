import Evaluation
import Layers
import XCTest
import _TestSupport

/// The softmax cross-entropy's gradient, the weighted k-NN against a brute-force reference,
/// and the linear probe on separable data.
final class ClassifierTests: XCTestCase {
    // MARK: Softmax cross-entropy

    func testSoftmaxCrossEntropyGradientMatchesFiniteDifferences() {
        let b = 5, c = 4
        let logits: Tensor<Double> = randomTensor([b, c], seed: 11)
        logits.scale(by: 3)
        let labels = [0, 3, 1, 1, 2]
        let probabilities = Tensor<Double>(zeros: [b, c]), gradient = Tensor<Double>(zeros: [b, c])
        let loss = SoftmaxCrossEntropy.forward(logits: logits, labels: labels, probabilities: probabilities)
        SoftmaxCrossEntropy.backward(probabilities: probabilities, labels: labels, into: gradient)

        // The loss by its definition, −mean log softmax, without the max shift.
        func reference(_ z: Tensor<Double>) -> Double {
            (0..<b).map { i in
                let sum = (0..<c).map { Double.exp(z[i, $0]) }.reduce(0, +)
                return -(z[i, labels[i]] - Double.log(sum))
            }.reduce(0, +) / Double(b)
        }
        assertClose(loss, reference(logits), rtol: 1e-12)
        for i in 0..<b { assertClose((0..<c).map { probabilities[i, $0] }.reduce(0, +), 1.0, rtol: 1e-12) }

        let h = 1e-6
        var numeric: [Double] = []
        for index in 0..<(b * c) {
            let original = logits[flat: index]
            logits[flat: index] = original + h
            let plus = reference(logits)
            logits[flat: index] = original - h
            let minus = reference(logits)
            logits[flat: index] = original
            numeric.append((plus - minus) / (2 * h))
        }
        assertClose(gradient.scalars, numeric, rtol: 1e-6, atol: 1e-9)
    }

    // MARK: k-NN

    /// DINO's weighted k-NN written directly: every similarity in Double, a full sort.
    private func bruteForceKNN(queries: Tensor<Float>, bank: Tensor<Float>, bankLabels: [Int64], classCount: Int,
                               k: Int, temperature: Double) -> [Int64] {
        let d = bank.columnCount
        func normalised(_ t: Tensor<Float>, _ i: Int) -> [Double] {
            let row = (0..<d).map { Double(t[i, $0]) }
            let norm = row.map { $0 * $0 }.reduce(0, +).squareRoot()
            return row.map { $0 / norm }
        }
        let bankRows = (0..<bank.rowCount).map { normalised(bank, $0) }
        return (0..<queries.rowCount).map { q in
            let query = normalised(queries, q)
            let similarities = bankRows.map { row in zip(row, query).map { $0 * $1 }.reduce(0, +) }
            let nearest = similarities.indices.sorted { similarities[$0] > similarities[$1] || (similarities[$0] == similarities[$1] && $0 < $1) }.prefix(k)
            var votes = [Double](repeating: 0, count: classCount)
            for j in nearest { votes[Int(bankLabels[j])] += Double.exp(similarities[j] / temperature) }
            return Int64(votes.indices.max { votes[$0] < votes[$1] || (votes[$0] == votes[$1] && $0 > $1) } ?? 0)
        }
    }

    func testNearestNeighboursMatchBruteForceReference() throws {
        let classes = 5
        let bank: Tensor<Float> = randomTensor([300, 16], seed: 21)
        let queries: Tensor<Float> = randomTensor([120, 16], seed: 22)
        let random = CounterRandom(seed: 23)
        let bankLabels = (0..<300).map { Int64(random.uniform(at: UInt64($0)) * Double(classes)) }
        let expected = bruteForceKNN(queries: queries, bank: bank, bankLabels: bankLabels, classCount: classes, k: 20,
                                     temperature: 0.07)
        // Small blocks: several gemm blocks, the last one partial.
        let knn = try NearestNeighborClassifier(k: 20, temperature: 0.07, blockElements: 300 * 7)
        let single = try knn.predict(queries, bank: bank, bankLabels: bankLabels, classCount: classes)
        XCTAssertEqual(single, expected)
        let double = try knn.predict(queries.converted(to: Double.self), bank: bank.converted(to: Double.self),
                                     bankLabels: bankLabels, classCount: classes)
        XCTAssertEqual(double, expected)
        // Not all one class: the check means something.
        XCTAssertGreaterThan(Set(expected).count, 2)

        // Split over 3 in-process ranks, the accuracy is that of one process.
        let queryLabels = (0..<120).map { Int64(random.uniform(at: 1000 + UInt64($0)) * Double(classes)) }
        let one = try knn.accuracy(queries: queries, queryLabels: queryLabels, bank: bank, bankLabels: bankLabels, classCount: classes)
        XCTAssertEqual(one, Double(zip(expected, queryLabels).filter { $0 == $1 }.count) / 120)
        let ranks = try runRanks(3) { communicator in
            try knn.accuracy(queries: queries, queryLabels: queryLabels, bank: bank, bankLabels: bankLabels,
                             classCount: classes, communicator: communicator)
        }
        XCTAssertEqual(ranks, [one, one, one])
    }

    func testNearestNeighboursRejectBadSettings() {
        assertThrowsError(try NearestNeighborClassifier(k: 0), containing: "k must be at least 1")
        assertThrowsError(try NearestNeighborClassifier(temperature: 0), containing: "temperature must be positive")
        let bank: Tensor<Float> = randomTensor([4, 3])
        assertThrowsError(try NearestNeighborClassifier().predict(bank, bank: bank, bankLabels: [0, 1, 2, 7], classCount: 3),
                          containing: "label 7")
    }

    // MARK: Linear probe

    func testLinearProbeSeparatesLinearlySeparableClasses() throws {
        // Labels are the argmax of a random linear map of the features, keeping rows with a
        // clear margin: separable by a linear classifier.
        let d = 8, classes = 3
        let all: Tensor<Float> = randomTensor([900, d], seed: 31)
        let teacher: Tensor<Float> = randomTensor([d, classes], seed: 32)
        let scores = Tensor.matmul(all, teacher)
        var rows: [Int] = [], labels: [Int64] = []
        for i in 0..<all.rowCount {
            let s = (0..<classes).map { Double(scores[i, $0]) }.sorted(by: >)
            guard s[0] - s[1] > 0.3 else { continue }
            rows.append(i)
            labels.append(Int64((0..<classes).max { scores[i, $0] < scores[i, $1] } ?? 0))
        }
        // Shift and scale the features so that standardisation has work to do.
        let features = Tensor<Float>(zeros: [rows.count, d])
        for (r, i) in rows.enumerated() { for j in 0..<d { features[r, j] = all[i, j] * Float(j + 1) + 5 } }
        let settings = LinearProbe.Settings(epochs: 60, learningRate: 0.02, weightDecay: 1e-4, batchSize: 32, seed: 1)
        let probe = try LinearProbe(training: features, labels: labels, classCount: classes, settings: settings)
        let accuracy = try probe.accuracy(features, labels: labels)
        XCTAssertGreaterThanOrEqual(accuracy, 0.99, "probe accuracy \(accuracy) on \(rows.count) separable rows")
        XCTAssertLessThan(probe.epochLosses.last ?? .infinity, probe.epochLosses.first ?? 0)

        // Deterministic: the same settings give the same probe.
        let again = try LinearProbe(training: features, labels: labels, classCount: classes, settings: settings)
        XCTAssertEqual(again.epochLosses, probe.epochLosses)
        XCTAssertEqual(try again.logits(features).scalars, try probe.logits(features).scalars)
    }

    func testLinearProbeRejectsBadInput() {
        let features: Tensor<Float> = randomTensor([4, 3])
        assertThrowsError(try LinearProbe(training: features, labels: [0, 1, 2, 3], classCount: 3), containing: "label 3")
        assertThrowsError(try LinearProbe(training: features, labels: [0, 1], classCount: 3), containing: "4 rows but 2 labels")
        assertThrowsError(try LinearProbe(training: features, labels: [0, 1, 0, 1], classCount: 2,
                                          settings: LinearProbe.Settings(epochs: 0)), containing: "epochs")
    }
}
