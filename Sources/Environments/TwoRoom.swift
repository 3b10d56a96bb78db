import Foundation
import Tensor

/// TwoRoom, the navigation benchmark of stable-worldmodel 0.1.1 (`swm/TwoRoom-v1`), with its
/// dynamics, collision rule and rendering reproduced in `Float`.
///
/// Two rooms of a 224 × 224 frame are separated by a vertical wall at x = 112 with one door;
/// the agent, a red Gaussian dot, moves by `speed · action` a step. Everything below is what
/// swm's `envs/two_room/env.py` does with its default variation values (only the agent and
/// target positions vary between episodes):
///
/// - state: the agent position `(x, y)` in pixels (`Float`); the goal is the target position.
/// - step: `next = position + clip(action, −1, 1) · 5` in `Float`; then the border clamp
///   `x, y ∈ [border + r, 224 − border − r] = [21, 203]` (r = 7, the dot radius); then the
///   wall: an agent that started left of x = 112 and would end right of 112 − 5 − 7 = 100 is
///   put at x = 99.5, one that started right and would end left of 124 at x = 124.5 — unless
///   the new y lies in the door band `[49 − 14 − 1.75, 49 + 14 + 1.75]`; y is kept.
/// - success: `‖position − target‖ < 16` (computed in `Float`).
/// - reset: each coordinate uniform in `[14, 209]` (drawn in `Double`, rounded to `Float`);
///   the agent is redrawn while `100 ≤ x ≤ 124`; the target is not constrained (swm leaves its
///   constraint commented out, so a target can lie inside the wall).
/// - frame: white, black border lines 4 pixels thick (rows and columns 10–13 and 210–213), a
///   black wall over columns 107–117 except rows 35–63 (the door), and the agent blended on
///   top with alpha `exp(−d² / 98) / max` (std 7) and truncated to `uint8`, as swm does in
///   `float32`. The target is not drawn.
///
/// The random draws of ``reset(seed:episode:)`` are ours (counter-based, keyed by seed and
/// episode): the distribution is swm's, the stream is not numpy's.
public struct TwoRoom: Environment, Equatable {
    public static let name = "two_room"
    public static let stateDimension = 2
    public static let actionDimension = 2
    public static let frameSize = 224

    /// Distance moved by a unit action (swm's `agent.speed` default; `MAX_SPEED` 10.5 is unused).
    public static let speed: Float = 5
    /// Radius of the agent used by the collisions, and the standard deviation of its dot.
    public static let agentRadius: Float = 7
    /// The border offset: border lines end at it, positions start there.
    public static let borderSize: Float = 14
    /// The wall's centre column and its thickness (its half width is `thickness / 2` = 5).
    public static let wallCenter: Float = 112
    public static let wallThickness = 10
    /// The door's centre row and half-extent.
    public static let doorCenter: Float = 49
    public static let doorHalfExtent: Float = 14
    /// Extra tolerance of the door band in the collision test.
    public static let doorMargin: Float = 1.75
    /// Success radius.
    public static let successDistance: Float = 16
    /// Where a blocked step ends: the wall's effective edge (radius included) ∓ 0.5.
    public static let blockedLeftX: Float = wallCenter - Float(wallThickness / 2) - agentRadius - 0.5
    public static let blockedRightX: Float = wallCenter + Float(wallThickness / 2) + agentRadius + 0.5

    /// The agent position.
    public var agent: SIMD2<Float>
    /// The target position.
    public var target: SIMD2<Float>

    /// An environment in swm's initial state (agent at (60, 112), target at (164, 112)).
    public init(agent: SIMD2<Float> = [60, 112], target: SIMD2<Float> = [164, 112]) {
        self.agent = agent; self.target = target
    }

    public var parameters: [(name: String, value: Double)] {
        [("speed", Double(Self.speed)), ("agent_radius", Double(Self.agentRadius)),
         ("border_size", Double(Self.borderSize)), ("wall_center", Double(Self.wallCenter)),
         ("wall_thickness", Double(Self.wallThickness)), ("door_center", Double(Self.doorCenter)),
         ("door_half_extent", Double(Self.doorHalfExtent)), ("door_margin", Double(Self.doorMargin)),
         ("success_distance", Double(Self.successDistance))]
    }

    public var state: [Float] { [agent.x, agent.y] }
    public var goal: [Float] { [target.x, target.y] }
    public var isSuccess: Bool { Self.distance(agent, target) < Self.successDistance }

    /// The Euclidean distance in `Float` (`sqrt(dx·dx + dy·dy)`, as torch's norm of two values).
    public static func distance(_ a: SIMD2<Float>, _ b: SIMD2<Float>) -> Float {
        let d = a - b
        return (d.x * d.x + d.y * d.y).squareRoot()
    }

    public mutating func reset(seed: UInt64, episode: UInt64) {
        var random = CounterRandom(seed: seed, streamName: "two_room reset").substream(episode).sequence()
        func coordinate() -> Float {
            // gymnasium's Box.sample: low + (high − low) · u in Double, then cast to float32.
            let u = Double(random.next() >> 11) * 0x1p-53
            return Float(14 + (209 - 14) * u)
        }
        let wallLow = Self.wallCenter - Float(Self.wallThickness / 2) - Self.agentRadius
        let wallHigh = Self.wallCenter + Float(Self.wallThickness / 2) + Self.agentRadius
        var start = SIMD2<Float>(coordinate(), coordinate())
        while start.x >= wallLow && start.x <= wallHigh { start = SIMD2(coordinate(), coordinate()) }
        agent = start
        target = SIMD2(coordinate(), coordinate())
    }

    public mutating func reset(state: [Float], goal: [Float]) throws {
        guard state.count == 2, goal.count == 2 else {
            throw EnvironmentError.invalid("two_room: state and goal need 2 values each, got \(state.count) and \(goal.count)")
        }
        guard (state + goal).allSatisfy(\.isFinite) else {
            throw EnvironmentError.invalid("two_room: state \(state) and goal \(goal) must be finite")
        }
        agent = SIMD2(state[0], state[1]); target = SIMD2(goal[0], goal[1])
    }

    public mutating func step(_ action: [Float]) {
        precondition(action.count == 2, "two_room: an action has 2 values, got \(action.count)")
        agent = Self.next(agent, action: SIMD2(action[0], action[1]))
    }

    /// The position after one step of `action` from `position`: move, clamp to the border, then
    /// block at the wall outside the door band (swm's `_apply_collisions`).
    public static func next(_ position: SIMD2<Float>, action: SIMD2<Float>) -> SIMD2<Float> {
        let clipped = action.clamped(lowerBound: SIMD2(repeating: -1), upperBound: SIMD2(repeating: 1))
        var moved = position + clipped * speed
        let low = borderSize + agentRadius, high = Float(frameSize) - borderSize - agentRadius
        moved.x = min(max(moved.x, low), high)
        moved.y = min(max(moved.y, low), high)
        let inDoor = moved.y >= doorCenter - doorHalfExtent - doorMargin && moved.y <= doorCenter + doorHalfExtent + doorMargin
        if position.x < wallCenter {
            if moved.x > blockedLeftX + 0.5 && !inDoor { moved.x = blockedLeftX }
        } else if moved.x < blockedRightX - 0.5 && !inDoor {
            moved.x = blockedRightX
        }
        return moved
    }

    // MARK: Rendering

    /// The frame without the agent: background, door, wall and border lines.
    public static let background: [UInt8] = {
        let size = frameSize
        var frame = [UInt8](repeating: 255, count: size * size * 3)
        let half = wallThickness / 2, wall = Int(wallCenter)
        let doorLow = doorCenter - doorHalfExtent, doorHigh = doorCenter + doorHalfExtent
        let border = Int(borderSize), line = 4
        for y in 0..<size {
            for x in 0..<size {
                let inStripe = x >= wall - half && x <= wall + half
                let inDoorSpan = Float(y) >= doorLow && Float(y) <= doorHigh
                let inBorder = (x >= border - line && x < border) || (x >= size - border && x < size - border + line)
                    || (y >= border - line && y < border) || (y >= size - border && y < size - border + line)
                if (inStripe && !inDoorSpan) || inBorder {
                    for c in 0..<3 { frame[(y * size + x) * 3 + c] = 0 }
                }
            }
        }
        return frame
    }()

    /// The agent's colour.
    public static let agentColor: SIMD3<Float> = [255, 0, 0]

    public func render(state: ArraySlice<Float>, into frame: inout [UInt8]) {
        precondition(state.count == 2, "two_room: a state has 2 values, got \(state.count)")
        Self.renderFrame(agent: SIMD2(state[state.startIndex], state[state.startIndex + 1]), into: &frame)
    }

    public var background: [UInt8]? { Self.background }

    public func changedRegion(state: ArraySlice<Float>) -> (rows: ClosedRange<Int>, columns: ClosedRange<Int>) {
        Self.dotWindow(agent: SIMD2(state[state.startIndex], state[state.startIndex + 1]))
    }

    /// The rows and columns the agent's dot can change: within ``dotReach`` of its nearest pixel.
    static func dotWindow(agent: SIMD2<Float>) -> (rows: ClosedRange<Int>, columns: ClosedRange<Int>) {
        let last = Float(frameSize - 1)
        let cx = Int(min(max(agent.x.rounded(), 0), last)), cy = Int(min(max(agent.y.rounded(), 0), last))
        return (max(0, cy - dotReach)...min(frameSize - 1, cy + dotReach), max(0, cx - dotReach)...min(frameSize - 1, cx + dotReach))
    }

    /// Pixels farther than this from the agent keep the background: there
    /// `alpha ≤ exp(−42²/98) / exp(−0.5/98) < 2⁻²⁵`, so `1 − alpha` rounds to 1 in `Float` and
    /// `255 · alpha` vanishes after truncation (swm computes the dot over the whole frame).
    static let dotReach = 42

    /// Draws the frame with the agent at `agent` into `frame` (224 × 224 × 3, HWC).
    public static func renderFrame(agent: SIMD2<Float>, into frame: inout [UInt8]) {
        let size = frameSize
        if frame.count != size * size * 3 { frame = background } else { frame.replaceSubrange(0..<frame.count, with: background) }
        let twoVariance = 2 * agentRadius * agentRadius
        // The largest value of the dot over the grid is at the pixel nearest to the agent.
        func nearest(_ v: Float) -> Float { min(max((v).rounded(), 0), Float(size - 1)) }
        let nx = nearest(agent.x) - agent.x, ny = nearest(agent.y) - agent.y
        let peak = Foundation.exp(-(nx * nx + ny * ny) / twoVariance)
        guard peak > 0 else { return }
        let (rows, columns) = dotWindow(agent: agent)
        for y in rows {
            let dy = Float(y) - agent.y
            for x in columns {
                let dx = Float(x) - agent.x
                if dx * dx + dy * dy > Float(dotReach * dotReach) { continue }
                let alpha = min(max(Foundation.exp(-(dx * dx + dy * dy) / twoVariance) / peak, 0), 1)
                let base = (y * size + x) * 3
                for c in 0..<3 {
                    // float32 blend, truncated to uint8 as torch's `.to(torch.uint8)`.
                    frame[base + c] = UInt8(Float(frame[base + c]) * (1 - alpha) + agentColor[c] * alpha)
                }
            }
        }
    }
}

extension TwoRoom {
    /// The RGB frame drawn directly at `size × size` by point sampling: output pixel `(i, j)`
    /// takes the native background pixel nearest to its centre `((j + ½)·224/size − ½, …)` and
    /// the dot's alpha at that centre (in native units, normalised by its largest value on the
    /// output grid), blended as ``renderFrame(agent:into:)`` does.
    ///
    /// About 12× fewer exponentials than the native frame, but not the area average of it: wall
    /// and border edges that cover part of an output pixel come out black or white instead of
    /// grey (the measured differences are in the README); observations use the area average.
    public static func renderDirect(agent: SIMD2<Float>, size: Int) -> [UInt8] {
        let scale = Float(frameSize) / Float(size)
        let centres = (0..<size).map { (Float($0) + 0.5) * scale - 0.5 }
        let twoVariance = 2 * agentRadius * agentRadius
        func dot(_ x: Float, _ y: Float) -> Float {
            let dx = x - agent.x, dy = y - agent.y
            return Foundation.exp(-(dx * dx + dy * dy) / twoVariance)
        }
        let nearest = { (v: Float) in centres.indices.min { abs(centres[$0] - v) < abs(centres[$1] - v) }! }
        let peak = dot(centres[nearest(agent.x)], centres[nearest(agent.y)])
        var out = [UInt8](repeating: 0, count: size * size * 3)
        for (oy, cy) in centres.enumerated() {
            let ny = min(frameSize - 1, max(0, Int(cy.rounded())))
            for (ox, cx) in centres.enumerated() {
                let nx = min(frameSize - 1, max(0, Int(cx.rounded())))
                let alpha = peak > 0 ? min(max(dot(cx, cy) / peak, 0), 1) : 0
                for c in 0..<3 {
                    let base = Float(background[(ny * frameSize + nx) * 3 + c])
                    out[(oy * size + ox) * 3 + c] = UInt8(base * (1 - alpha) + agentColor[c] * alpha)
                }
            }
        }
        return out
    }
}
