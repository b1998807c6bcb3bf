// Test-only: GPU faults inside the engine's module worker, where a page's own hooks
// (gpu-faults.html) cannot reach. A test serves the package's worker.js with
// `import "/test/gpu-faults-worker.js";` put first (device_lost.test.js does it with
// `server.intercept`), so this runs before the engine and:
//   - keeps every GPUDevice the worker creates;
//   - on a {type: "destroy"} message on the BroadcastChannel "webvlm-gpu-faults" (posted by
//     the page), destroys the newest one (a lost device: driver reset, GPU process crash) and
//     answers {type: "destroyed", devices} (how many the worker has created so far).
// Nothing in the package imports this file: normal pages never have it.

const devices = [];
const requestDevice = GPUAdapter.prototype.requestDevice;
GPUAdapter.prototype.requestDevice = async function (descriptor) {
  const device = await requestDevice.call(this, descriptor);
  devices.push(device);
  return device;
};

const channel = new BroadcastChannel("webvlm-gpu-faults");
channel.onmessage = (e) => {
  if (e.data?.type !== "destroy") return;
  devices.at(-1)?.destroy();
  channel.postMessage({ type: "destroyed", devices: devices.length });
};
