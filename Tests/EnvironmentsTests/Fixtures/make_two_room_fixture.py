"""Records the golden TwoRoom fixture (two_room_fixture.h5) from stable-worldmodel itself.

Made once with stable-worldmodel==0.1.1 (PyPI), torch 2.15.0 (CPU), numpy 2.4.6,
gymnasium 1.4.0, h5py, Python 3.11.7. To remake it:

    python3 -m venv venv && venv/bin/pip install stable-worldmodel==0.1.1 torch h5py
    venv/bin/python make_two_room_fixture.py two_room_fixture.h5

(swm imports more than its metadata requires: loguru, tqdm, pillow, lancedb, torchvision,
einops, opencv-python-headless, imageio may need installing by hand.)

Contents (all float32 unless noted):
  expert/start, expert/target        R x 2   from TwoRoomEnv.reset(seed=i)
  expert/actions                     R x T x 2  swm ExpertPolicy(action_noise=2, seed=i) actions
  expert/directions                  R x T x 2  the noiseless expert action at each state
  expert/states                      R x (T+1) x 2  states after each step (row 0: start)
  expert/length                      R (int64)  steps taken: until terminated (success) or T
  expert/success                     R x T (uint8)  `terminated` after each step
  random/...                         the same with uniform actions in [-1.5, 1.5] (clipping),
                                     starts near the wall, no termination
  frames/state                       F x 2     agent positions rendered
  frames/rgb                         F x 224 x 224 x 3 (uint8)  env.render()
  frames/area64                      F x 64 x 64 x 3   F.interpolate(mode="area") of rgb as float
  resets/agent, resets/target        N x 2     reset(seed=i) for i < N, the sampling distribution
"""
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from stable_worldmodel.envs.two_room.env import TwoRoomEnv
from stable_worldmodel.envs.two_room.expert_policy import ExpertPolicy

T = 100


def rollout(env, start, target, act):
    env.reset(seed=0, options={'state': np.asarray(start, np.float32),
                               'target_state': np.asarray(target, np.float32)})
    states = [env.agent_position.numpy().copy()]
    actions, directions, success = [], [], []
    length = T
    for t in range(T):
        a, d = act(env, t)
        _, _, terminated, _, _ = env.step(a)
        actions.append(np.asarray(a, np.float32))
        directions.append(np.asarray(d, np.float32))
        states.append(env.agent_position.numpy().copy())
        success.append(bool(terminated))
        if terminated and length == T:
            length = t + 1
    return (np.array(states, np.float32), np.array(actions, np.float32),
            np.array(directions, np.float32), np.array(success, np.uint8), length)


def expert_group(f, name, cases, make_act, stop_on_success):
    keys = ['start', 'target', 'states', 'actions', 'directions', 'success', 'length']
    out = {k: [] for k in keys}
    for i, (start, target) in enumerate(cases):
        env = TwoRoomEnv()
        act = make_act(env, i)
        states, actions, directions, success, length = rollout(env, start, target, act)
        if stop_on_success:   # pad after the end with the last state and zero actions
            states[length + 1:] = states[length]
            actions[length:] = 0
            directions[length:] = 0
        for k, v in zip(keys, [start, target, states, actions, directions, success, length]):
            out[k].append(v)
    g = f.create_group(name)
    for k in keys:
        g.create_dataset(k, data=np.array(out[k], np.int64 if k == 'length' else None))


def main(path):
    torch.set_num_threads(1)
    with h5py.File(path, 'w') as f:
        f.attrs['stable_worldmodel'] = '0.1.1'
        f.attrs['torch'] = str(torch.__version__)
        f.attrs['numpy'] = str(np.__version__)

        # Expert rollouts from swm's own reset distribution, with swm's noisy expert.
        cases = []
        for i in range(12):
            env = TwoRoomEnv()
            _, info = env.reset(seed=1000 + i)
            cases.append((info['state'].astype(np.float32), info['goal_state'].astype(np.float32)))

        def expert(env, i):
            noisy = ExpertPolicy(action_noise=2.0, action_repeat_prob=0.05, seed=i)
            clean = ExpertPolicy()
            noisy.set_env(env)
            clean.set_env(env)

            def act(env, t):
                info = {'state': env.agent_position.numpy(), 'goal_state': env.target_position.numpy()}
                return noisy.get_action(info), clean.get_action(info)
            return act
        expert_group(f, 'expert', cases, expert, stop_on_success=True)

        # Random actions (some beyond [-1, 1]) from starts near the wall and the door.
        rng = np.random.default_rng(7)
        starts = [(95.0, 100.0), (130.0, 150.0), (100.2, 40.0), (124.3, 60.0), (99.5, 64.0),
                  (124.5, 33.5), (60.0, 25.0), (200.0, 200.0), (105.0, 49.0), (118.0, 50.0)]
        cases = [(np.array(s, np.float32), np.array([164.0, 112.0], np.float32)) for s in starts]

        def random_actions(env, i):
            seq = rng.uniform(-1.5, 1.5, size=(T, 2)).astype(np.float32)
            seq[:, 0] += np.float32(0.8 if starts[i][0] < 112 else -0.8)   # push towards the wall
            return lambda env, t: (seq[t], np.zeros(2, np.float32))
        expert_group(f, 'random', cases, random_actions, stop_on_success=False)

        # Frames at non-integer positions, near the wall, the door and the border.
        frame_states = np.array([[60.0, 112.0], [21.0, 21.0], [203.0, 203.0], [99.5, 49.0],
                                 [112.3, 40.7], [37.25, 181.6], [150.77, 96.13], [124.5, 203.0]], np.float32)
        env = TwoRoomEnv()
        env.reset(seed=0)
        rgb = []
        for s in frame_states:
            env._set_state(s)
            rgb.append(env.render())
        rgb = np.array(rgb, np.uint8)
        area = F.interpolate(torch.from_numpy(rgb).permute(0, 3, 1, 2).float(), size=(64, 64), mode='area')
        g = f.create_group('frames')
        g.create_dataset('state', data=frame_states)
        g.create_dataset('rgb', data=rgb, compression='gzip', compression_opts=9, chunks=(1, 224, 224, 3))
        g.create_dataset('area64', data=area.permute(0, 2, 3, 1).numpy().astype(np.float32),
                         compression='gzip', compression_opts=9, chunks=(1, 64, 64, 3))

        # The reset distribution.
        agents, targets = [], []
        for i in range(2000):
            env = TwoRoomEnv()
            _, info = env.reset(seed=i)
            agents.append(info['state'])
            targets.append(info['goal_state'])
        g = f.create_group('resets')
        g.create_dataset('agent', data=np.array(agents, np.float32))
        g.create_dataset('target', data=np.array(targets, np.float32))


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'two_room_fixture.h5')
