import Communication
import _TestSupport

/// Runs the world model's step on this rank's clips of ``WorldModelFixture``'s global batch
/// (both predictors, both SIGReg reduction paths) and reports the loss and the all-reduced
/// gradients; the test compares them with one process on the whole batch.
func worldModelScenario(_ communicator: any Communicator, _ arguments: ScenarioArguments) throws -> [String: JSONValue] {
    try WorldModelFixture.run(on: communicator)
}
