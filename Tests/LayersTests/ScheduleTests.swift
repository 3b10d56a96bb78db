import XCTest
import Optimizers
import _TestSupport

final class ScheduleTests: XCTestCase {
    func testWarmupCosineAtWarmupStartEndMidpointAndEnd() throws {
        // VICReg's adjust_learning_rate with 10 warm-up steps of 110 and end_lr = 0.001 · base.
        let schedule = try LearningRateSchedule.warmupCosine(base: 2, warmupSteps: 10, totalSteps: 110,
                                                             finalFraction: 0.001).validated()
        XCTAssertEqual(schedule.learningRate(at: 0), 0, "warm-up starts at 0")
        assertClose(schedule.learningRate(at: 5), 1, rtol: 1e-15)
        assertClose(schedule.learningRate(at: 9), 1.8, rtol: 1e-15)
        XCTAssertEqual(schedule.learningRate(at: 10), 2, "warm-up ends at the base rate")
        // Halfway through the decay, q = ½: (base + end) / 2.
        assertClose(schedule.learningRate(at: 60), (2 + 0.002) / 2, rtol: 1e-14)
        // A quarter of the way: q = ½ (1 + cos(π/4)).
        let q = 0.5 * (1 + 0.5.squareRoot())
        assertClose(schedule.learningRate(at: 35), 2 * q + 0.002 * (1 - q), rtol: 1e-14)
        assertClose(schedule.learningRate(at: 110), 0.002, rtol: 1e-14)
        assertClose(schedule.learningRate(at: 500), 0.002, rtol: 1e-14, "stays at the final rate")
        // Monotone decay after the warm-up.
        for step in 10..<110 {
            XCTAssertGreaterThan(schedule.learningRate(at: step), schedule.learningRate(at: step + 1))
        }
    }

    func testWarmupCosineWithoutWarmupStartsAtBase() throws {
        let schedule = try LearningRateSchedule.warmupCosine(base: 0.3, warmupSteps: 0, totalSteps: 4,
                                                             finalFraction: 0).validated()
        XCTAssertEqual(schedule.learningRate(at: 0), 0.3)
        assertClose(schedule.learningRate(at: 2), 0.15, rtol: 1e-15)
        assertClose(schedule.learningRate(at: 4), 0, atol: 1e-17)
    }

    func testConstant() throws {
        let schedule = try LearningRateSchedule.constant(0.05).validated()
        XCTAssertEqual(schedule.learningRate(at: 0), 0.05)
        XCTAssertEqual(schedule.learningRate(at: 12345), 0.05)
    }

    func testValidationNamesTheBadValue() {
        XCTAssertThrowsError(try LearningRateSchedule.warmupCosine(base: 1, warmupSteps: 10, totalSteps: 10,
                                                                   finalFraction: 0.001).validated()) {
            XCTAssertTrue("\($0)".contains("totalSteps"), "\($0)")
        }
        XCTAssertThrowsError(try LearningRateSchedule.warmupCosine(base: 1, warmupSteps: 1, totalSteps: 10,
                                                                   finalFraction: 2).validated())
        XCTAssertThrowsError(try LearningRateSchedule.warmupCosine(base: -1, warmupSteps: 1, totalSteps: 10,
                                                                   finalFraction: 0).validated())
        XCTAssertThrowsError(try LearningRateSchedule.constant(.nan).validated())
    }

    func testLearningRateScaledByGlobalBatch() {
        // VICReg: base_lr 0.2 at batch 2048 → 1.6.
        XCTAssertEqual(scaledLearningRate(base: 0.2, globalBatchSize: 2048, scaleByBatch: true), 1.6)
        XCTAssertEqual(scaledLearningRate(base: 0.2, globalBatchSize: 256, scaleByBatch: true), 0.2)
        XCTAssertEqual(scaledLearningRate(base: 0.2, globalBatchSize: 64, scaleByBatch: true), 0.05)
        XCTAssertEqual(scaledLearningRate(base: 0.2, globalBatchSize: 2048, scaleByBatch: false), 0.2)
    }
}
