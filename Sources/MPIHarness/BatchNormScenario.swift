import Communication
import _TestSupport

/// Runs synchronised batch norm (1d and 2d, training then evaluation) on this rank's rows of a
/// fixed global batch and reports the results (``BatchNormFixture``); the test compares the
/// ranks, combined, with one process on the whole batch.
func batchNormScenario(_ communicator: any Communicator, _ arguments: ScenarioArguments) throws -> [String: JSONValue] {
    try BatchNormFixture.run(on: communicator)
}
