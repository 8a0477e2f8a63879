{
  "format_version": 1,
  "layers": [
    {
      "name": "features.0.0",
      "kind": "conv",
      "shape": [32, 3, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.1.conv.0.0",
      "kind": "conv",
      "shape": [32, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.1.conv.1",
      "kind": "conv",
      "shape": [16, 32, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.2.conv.0.0",
      "kind": "conv",
      "shape": [96, 16, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.2.conv.1.0",
      "kind": "conv",
      "shape": [96, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.2.conv.2",
      "kind": "conv",
      "shape": [24, 96, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.3.conv.0.0",
      "kind": "conv",
      "shape": [144, 24, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.3.conv.1.0",
      "kind": "conv",
      "shape": [144, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.3.conv.2",
      "kind": "conv",
      "shape": [24, 144, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.4.conv.0.0",
      "kind": "conv",
      "shape": [144, 24, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.4.conv.1.0",
      "kind": "conv",
      "shape": [144, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.4.conv.2",
      "kind": "conv",
      "shape": [32, 144, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.5.conv.0.0",
      "kind": "conv",
      "shape": [192, 32, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.5.conv.1.0",
      "kind": "conv",
      "shape": [192, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.5.conv.2",
      "kind": "conv",
      "shape": [32, 192, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.6.conv.0.0",
      "kind": "conv",
      "shape": [192, 32, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.6.conv.1.0",
      "kind": "conv",
      "shape": [192, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.6.conv.2",
      "kind": "conv",
      "shape": [32, 192, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.7.conv.0.0",
      "kind": "conv",
      "shape": [192, 32, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.7.conv.1.0",
      "kind": "conv",
      "shape": [192, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.7.conv.2",
      "kind": "conv",
      "shape": [64, 192, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.8.conv.0.0",
      "kind": "conv",
      "shape": [384, 64, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.8.conv.1.0",
      "kind": "conv",
      "shape": [384, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.8.conv.2",
      "kind": "conv",
      "shape": [64, 384, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.9.conv.0.0",
      "kind": "conv",
      "shape": [384, 64, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.9.conv.1.0",
      "kind": "conv",
      "shape": [384, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.9.conv.2",
      "kind": "conv",
      "shape": [64, 384, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.10.conv.0.0",
      "kind": "conv",
      "shape": [384, 64, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.10.conv.1.0",
      "kind": "conv",
      "shape": [384, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.10.conv.2",
      "kind": "conv",
      "shape": [64, 384, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.11.conv.0.0",
      "kind": "conv",
      "shape": [384, 64, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.11.conv.1.0",
      "kind": "conv",
      "shape": [384, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.11.conv.2",
      "kind": "conv",
      "shape": [96, 384, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.12.conv.0.0",
      "kind": "conv",
      "shape": [576, 96, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.12.conv.1.0",
      "kind": "conv",
      "shape": [576, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.12.conv.2",
      "kind": "conv",
      "shape": [96, 576, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.13.conv.0.0",
      "kind": "conv",
      "shape": [576, 96, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.13.conv.1.0",
      "kind": "conv",
      "shape": [576, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.13.conv.2",
      "kind": "conv",
      "shape": [96, 576, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.14.conv.0.0",
      "kind": "conv",
      "shape": [576, 96, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.14.conv.1.0",
      "kind": "conv",
      "shape": [576, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.14.conv.2",
      "kind": "conv",
      "shape": [160, 576, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.15.conv.0.0",
      "kind": "conv",
      "shape": [960, 160, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.15.conv.1.0",
      "kind": "conv",
      "shape": [960, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.15.conv.2",
      "kind": "conv",
      "shape": [160, 960, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.16.conv.0.0",
      "kind": "conv",
      "shape": [960, 160, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.16.conv.1.0",
      "kind": "conv",
      "shape": [960, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.16.conv.2",
      "kind": "conv",
      "shape": [160, 960, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.17.conv.0.0",
      "kind": "conv",
      "shape": [960, 160, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.17.conv.1.0",
      "kind": "conv",
      "shape": [960, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.17.conv.2",
      "kind": "conv",
      "shape": [320, 960, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    },
    {
      "name": "features.18.0",
      "kind": "conv",
      "shape": [1280, 320, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5,
      "p_pos": 0.5
    }
  ],
  "source": {
    "description": "50/50 random signs in every MobileNetV2 conv layer (Freeze RAND-Polarity control)",
    "type": "manual"
  },
  "extraction": {},
  "producer": {
    "name": "polarpack",
    "version": "0.1.0"
  },
  "metadata": {}
}
