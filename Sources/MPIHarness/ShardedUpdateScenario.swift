import Communication
import _TestSupport

/// Takes sharded optimizer steps (LARS, AdamW, SGD, with clipping) on this rank's share and
/// reports the gathered parameters and optimizer state (``ShardedUpdateFixture``); the test
/// compares every rank with one process on the summed gradients. `--collectives` keeps the
/// steps to MPI's collectives instead of the node's shared memory.
func shardedUpdateScenario(_ communicator: any Communicator, _ arguments: ScenarioArguments) throws -> [String: JSONValue] {
    try ShardedUpdateFixture.run(on: communicator, sharedMemory: !arguments.flag("collectives"))
}
