# aios — every target installs what it needs first, so `make run` and `make test` work on a fresh
# Debian/Ubuntu machine. Debian packages are installed when running as root; otherwise the exact
# apt-get command is printed and the targets go on (tests that need a missing tool say so and skip).

SHELL := /bin/bash
NODE_BIN := node_modules/.bin
# Debian packages the test suite uses: numpy checks our .npy files against NumPy itself; Vulkan
# (Mesa) lets the WebGPU provider be asked for an adapter, which it must refuse with a reason; gcc
# builds the stand-in Edge TPU delegate; libxrt1 is Xilinx's runtime, loaded for real (no card);
# Mosquitto is the broker the MQTT sink publishes to; ffmpeg decodes video and audio sources;
# gpsd (gpsfake) replays a real NMEA log to the GNSS source; can-utils for SocketCAN; PostgreSQL is
# the shared store of controller replicas; swtpm and tpm2-tools are the TPM the attestation tests use.
APT_PACKAGES := ffmpeg python3-numpy libvulkan1 mesa-vulkan-drivers gcc libc6-dev libxrt1 mosquitto mosquitto-clients gpsd gpsd-clients can-utils protobuf-compiler age postgresql swtpm swtpm-tools tpm2-tools

.PHONY: all setup apt build run test bench lint clean

all: build

setup: node_modules/.installed apt

node_modules/.installed: package.json package-lock.json .npmrc
	@node -e 'const [a,b]=process.versions.node.split(".").map(Number); if (a<20) { console.error("aios needs Node.js >= 20, found " + process.version + ". Install nodejs 20 or newer."); process.exit(1) }'
	npm ci --no-audit --no-fund
	@touch $@

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages: $$missing"; \
	  (apt-get install -y --no-install-recommends $$missing || (apt-get update && apt-get install -y --no-install-recommends $$missing)) >/dev/null; \
	else \
	  echo "note: some tests need Debian packages that are not installed; run: sudo apt-get install -y $$missing"; \
	fi

build: node_modules/.installed
	node scripts/gen-proto.mjs
	$(NODE_BIN)/tsc -p tsconfig.json
	@cp drivers/engines/xrt/child.mjs dist/drivers/engines/xrt/child.mjs
	@cp drivers/engines/onnxruntime/session-worker.mjs dist/drivers/engines/onnxruntime/session-worker.mjs
	@mkdir -p dist/deploy/proto/gen && cp deploy/proto/gen/aios.js dist/deploy/proto/gen/aios.js
	@chmod +x dist/deploy/cli/main.js

# The main demo: what this machine has, a real face detector on a real photo and a photo without
# a face (the InferenceService API), then the face-detection pipeline on real video for a few
# seconds with its per-stage table (recorded to out/face-detection.mcap), then the fleet demo: a
# controller and three device agents, a model rolled out to them canary first (examples/fleet-demo.ts).
run: setup build
	node dist/deploy/cli/main.js devices
	@echo
	node dist/examples/face-score.js models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx \
	  test/fixtures/inputs/blazeface128-face.npy test/fixtures/inputs/blazeface128-noface.npy
	@echo
	node dist/deploy/cli/main.js run examples/pipelines/face-detection.yaml --for 4s --stats
	@echo
	node dist/examples/fleet-demo.js

test: setup
	node scripts/gen-proto.mjs
	$(NODE_BIN)/tsc -p tsconfig.test.json
	node scripts/check-layers.mjs
	$(NODE_BIN)/vitest run

# Every benchmark, each printing its ratio against a baseline measured in the same run
# (docs/performance.md has the numbers). The overload bench alone runs for 2¼ minutes.
bench: build
	node dist/bench/inference-overhead.js
	node dist/bench/engines.js
	node dist/bench/pipeline-hops.js
	node dist/bench/pipeline-throughput.js
	node dist/bench/frame-transport.js
	node dist/bench/scheduler.js
	node dist/bench/batching.js
	node dist/bench/failover.js
	node dist/bench/age-decrypt.js
	node dist/bench/bundle-verify.js
	node dist/bench/pipeline-overload.js
	node dist/bench/spool.js
	node dist/bench/ota.js
	node dist/bench/agent-crash.js --kills 1000
	node dist/bench/fleet.js --devices 10000 --seconds 60
	node dist/bench/attest.js
	node dist/bench/attest-controller.js --devices 1000

lint: node_modules/.installed
	node scripts/gen-proto.mjs
	$(NODE_BIN)/tsc -p tsconfig.test.json
	node scripts/check-layers.mjs

clean:
	rm -rf dist coverage
