import Tensor

/// The scripted expert of swm's TwoRoom (`envs/two_room/expert_policy.py`): head for the door
/// centre until within reach, then for the target; optionally noisy.
///
/// With the target in the other room (sides decided by `x > 112`), the waypoint is the door
/// centre (112, 49) until the agent is within ``doorReachTolerance`` of it (`‖door − agent‖ >
/// 10.5` keeps heading there), then the target; in the same room it is the target. The action
/// is the unit vector towards the waypoint in `Float` (zero when closer than 1e-8), plus
/// Gaussian noise of standard deviation ``actionNoise`` per component, clipped to `[−1, 1]`.
///
/// ``repeatProbability`` repeats the previous action with that probability (after the noise,
/// as swm orders it). swm 0.1.1 accepts `action_repeat_prob` but never stores it nor records
/// the previous action, so its expert never repeats: 0 reproduces swm.
public struct ExpertPolicy: Sendable, Equatable {
    /// Standard deviation of the Gaussian noise added to each component (swm's class default 0).
    public var actionNoise: Float
    /// Probability of repeating the previous action (0 reproduces swm 0.1.1, see above).
    public var repeatProbability: Double
    /// Distance to the door centre under which the agent heads for the target (swm: 10.5).
    public var doorReachTolerance: Float

    /// - Parameters:
    ///   - actionNoise: per-component noise standard deviation (default 0, swm's class default).
    ///   - repeatProbability: chance to repeat the previous action (default 0).
    ///   - doorReachTolerance: door reach distance (default 10.5, as swm).
    public init(actionNoise: Float = 0, repeatProbability: Double = 0, doorReachTolerance: Float = 10.5) {
        self.actionNoise = actionNoise; self.repeatProbability = repeatProbability
        self.doorReachTolerance = doorReachTolerance
    }

    /// The noiseless action at `agent` for `target`: the unit vector towards the waypoint.
    public func direction(agent: SIMD2<Float>, target: SIMD2<Float>) -> SIMD2<Float> {
        var waypoint = target
        if (agent.x > TwoRoom.wallCenter) != (target.x > TwoRoom.wallCenter) {
            // One door, and its half-extent 14 fits the agent (14 ≥ 1.1 · 7), so it is the door.
            let door = SIMD2<Float>(TwoRoom.wallCenter, TwoRoom.doorCenter)
            if TwoRoom.distance(door, agent) > doorReachTolerance { waypoint = door }
        }
        let offset = waypoint - agent
        let norm = TwoRoom.distance(waypoint, agent)
        return Double(norm) > 1e-8 ? offset / norm : .zero
    }

    /// The action at `agent` for `target` at step `step` of an episode whose draws come from
    /// `random`: the noise of step t is elements 4t and 4t + 1 of ``CounterRandom/normal(at:)``,
    /// the repeat draw element 4t + 2 of ``CounterRandom/uniform(at:)``.
    /// - Parameters:
    ///   - previous: the previous action of the episode (nil at its first step).
    public func action(agent: SIMD2<Float>, target: SIMD2<Float>, previous: SIMD2<Float>?,
                       random: CounterRandom, step: Int) -> SIMD2<Float> {
        var action = direction(agent: agent, target: target)
        let base = 4 * UInt64(step)
        if actionNoise > 0 {
            // swm: float32 action + float32(normal · σ drawn in Double).
            action += SIMD2(Float(random.normal(at: base) * Double(actionNoise)),
                            Float(random.normal(at: base + 1) * Double(actionNoise)))
        }
        if let previous, repeatProbability > 0, random.uniform(at: base + 2) < repeatProbability { action = previous }
        return action.clamped(lowerBound: SIMD2(repeating: -1), upperBound: SIMD2(repeating: 1))
    }
}
