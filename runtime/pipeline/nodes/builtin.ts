import { NodeKinds } from '../node-kinds.js';
import { callbackSink } from './sinks/callback.js';
import { fileSink } from './sinks/file.js';
import { mcapSink } from './sinks/mcap.js';
import { mqttSink } from './sinks/mqtt.js';
import { stdoutSink } from './sinks/stdout.js';
import { audioSource } from './sources/audio.js';
import { canSource } from './sources/can.js';
import { gnssSource } from './sources/gnss.js';
import { lidarSource } from './sources/lidar.js';
import { mcapSource } from './sources/mcap.js';
import { syntheticSource } from './sources/synthetic.js';
import { videoSource } from './sources/video.js';
import { audioToTensor } from './stages/audio-to-tensor.js';
import { decodeActivity } from './stages/decode-activity.js';
import { decodeBlazeface } from './stages/decode-blazeface.js';
import { decodeClasses } from './stages/decode-classes.js';
import { decodeKeypoints } from './stages/decode-keypoints.js';
import { decodeSsd } from './stages/decode-ssd.js';
import { filterStage } from './stages/filter.js';
import { imageConvert } from './stages/image-convert.js';
import { imageCrop } from './stages/image-crop.js';
import { imageNormalize } from './stages/image-normalize.js';
import { imageResize } from './stages/image-resize.js';
import { imageToTensor } from './stages/image-to-tensor.js';
import { inferStage } from './stages/infer.js';
import { pointcloudNearest } from './stages/pointcloud-nearest.js';
import { syncStage } from './stages/sync.js';
import { throttleStage } from './stages/throttle.js';

/**
 * Every built-in node kind: the composition root of pipelines, as drivers/builtin.ts is of the
 * HAL. A new sensor, stage or sink is one more entry.
 */
export function builtinNodeKinds(): NodeKinds {
  return new NodeKinds().register(
    // sources
    videoSource, audioSource, syntheticSource, lidarSource, gnssSource, canSource, mcapSource,
    // stages
    imageResize, imageCrop, imageConvert, imageNormalize, imageToTensor, audioToTensor, inferStage,
    decodeBlazeface, decodeActivity, decodeSsd, decodeClasses, decodeKeypoints, syncStage, throttleStage, filterStage,
    pointcloudNearest,
    // sinks
    mcapSink, fileSink, stdoutSink, callbackSink, mqttSink,
  );
}
