{
  "format_version": 1,
  "layers": [
    {
      "name": "features.0.0",
      "kind": "conv",
      "shape": [32, 3, 3, 3],
      "p0": 0.0,
      "p_neg": 0.4837962962962963,
      "p_pos": 0.5162037037037037,
      "counts": [0, 418, 446]
    },
    {
      "name": "features.1.conv.0.0",
      "kind": "conv",
      "shape": [32, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.6041666666666666,
      "p_pos": 0.3958333333333333,
      "counts": [0, 174, 114]
    },
    {
      "name": "features.1.conv.1",
      "kind": "conv",
      "shape": [16, 32, 1, 1],
      "p0": 0.0,
      "p_neg": 0.49609375,
      "p_pos": 0.50390625,
      "counts": [0, 254, 258]
    },
    {
      "name": "features.2.conv.0.0",
      "kind": "conv",
      "shape": [96, 16, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5026041666666666,
      "p_pos": 0.4973958333333333,
      "counts": [0, 772, 764]
    },
    {
      "name": "features.2.conv.1.0",
      "kind": "conv",
      "shape": [96, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5532407407407407,
      "p_pos": 0.44675925925925924,
      "counts": [0, 478, 386]
    },
    {
      "name": "features.2.conv.2",
      "kind": "conv",
      "shape": [24, 96, 1, 1],
      "p0": 0.0,
      "p_neg": 0.49609375,
      "p_pos": 0.50390625,
      "counts": [0, 1143, 1161]
    },
    {
      "name": "features.3.conv.0.0",
      "kind": "conv",
      "shape": [144, 24, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5008680555555556,
      "p_pos": 0.4991319444444444,
      "counts": [0, 1731, 1725]
    },
    {
      "name": "features.3.conv.1.0",
      "kind": "conv",
      "shape": [144, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5378086419753086,
      "p_pos": 0.46219135802469136,
      "counts": [0, 697, 599]
    },
    {
      "name": "features.3.conv.2",
      "kind": "conv",
      "shape": [24, 144, 1, 1],
      "p0": 0.0,
      "p_neg": 0.48813657407407407,
      "p_pos": 0.5118634259259259,
      "counts": [0, 1687, 1769]
    },
    {
      "name": "features.4.conv.0.0",
      "kind": "conv",
      "shape": [144, 24, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5109953703703703,
      "p_pos": 0.48900462962962965,
      "counts": [0, 1766, 1690]
    },
    {
      "name": "features.4.conv.1.0",
      "kind": "conv",
      "shape": [144, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.46296296296296297,
      "p_pos": 0.5370370370370371,
      "counts": [0, 600, 696]
    },
    {
      "name": "features.4.conv.2",
      "kind": "conv",
      "shape": [32, 144, 1, 1],
      "p0": 0.0,
      "p_neg": 0.4932725694444444,
      "p_pos": 0.5067274305555556,
      "counts": [0, 2273, 2335]
    },
    {
      "name": "features.5.conv.0.0",
      "kind": "conv",
      "shape": [192, 32, 1, 1],
      "p0": 0.0,
      "p_neg": 0.50341796875,
      "p_pos": 0.49658203125,
      "counts": [0, 3093, 3051]
    },
    {
      "name": "features.5.conv.1.0",
      "kind": "conv",
      "shape": [192, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5746527777777778,
      "p_pos": 0.4253472222222222,
      "counts": [0, 993, 735]
    },
    {
      "name": "features.5.conv.2",
      "kind": "conv",
      "shape": [32, 192, 1, 1],
      "p0": 0.0,
      "p_neg": 0.4970703125,
      "p_pos": 0.5029296875,
      "counts": [0, 3054, 3090]
    },
    {
      "name": "features.6.conv.0.0",
      "kind": "conv",
      "shape": [192, 32, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5081380208333334,
      "p_pos": 0.4918619791666667,
      "counts": [0, 3122, 3022]
    },
    {
      "name": "features.6.conv.1.0",
      "kind": "conv",
      "shape": [192, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5734953703703703,
      "p_pos": 0.42650462962962965,
      "counts": [0, 991, 737]
    },
    {
      "name": "features.6.conv.2",
      "kind": "conv",
      "shape": [32, 192, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5021158854166666,
      "p_pos": 0.4978841145833333,
      "counts": [0, 3085, 3059]
    },
    {
      "name": "features.7.conv.0.0",
      "kind": "conv",
      "shape": [192, 32, 1, 1],
      "p0": 0.0,
      "p_neg": 0.50390625,
      "p_pos": 0.49609375,
      "counts": [0, 3096, 3048]
    },
    {
      "name": "features.7.conv.1.0",
      "kind": "conv",
      "shape": [192, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5040509259259259,
      "p_pos": 0.49594907407407407,
      "counts": [0, 871, 857]
    },
    {
      "name": "features.7.conv.2",
      "kind": "conv",
      "shape": [64, 192, 1, 1],
      "p0": 0.0,
      "p_neg": 0.4991861979166667,
      "p_pos": 0.5008138020833334,
      "counts": [0, 6134, 6154]
    },
    {
      "name": "features.8.conv.0.0",
      "kind": "conv",
      "shape": [384, 64, 1, 1],
      "p0": 0.0,
      "p_neg": 0.4982503255208333,
      "p_pos": 0.5017496744791666,
      "counts": [0, 12245, 12331]
    },
    {
      "name": "features.8.conv.1.0",
      "kind": "conv",
      "shape": [384, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5954861111111112,
      "p_pos": 0.4045138888888889,
      "counts": [0, 2058, 1398]
    },
    {
      "name": "features.8.conv.2",
      "kind": "conv",
      "shape": [64, 384, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5025634765625,
      "p_pos": 0.4974365234375,
      "counts": [0, 12351, 12225]
    },
    {
      "name": "features.9.conv.0.0",
      "kind": "conv",
      "shape": [384, 64, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5009765625,
      "p_pos": 0.4990234375,
      "counts": [0, 12312, 12264]
    },
    {
      "name": "features.9.conv.1.0",
      "kind": "conv",
      "shape": [384, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5549768518518519,
      "p_pos": 0.44502314814814814,
      "counts": [0, 1918, 1538]
    },
    {
      "name": "features.9.conv.2",
      "kind": "conv",
      "shape": [64, 384, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5037841796875,
      "p_pos": 0.4962158203125,
      "counts": [0, 12381, 12195]
    },
    {
      "name": "features.10.conv.0.0",
      "kind": "conv",
      "shape": [384, 64, 1, 1],
      "p0": 0.0,
      "p_neg": 0.4973551432291667,
      "p_pos": 0.5026448567708334,
      "counts": [0, 12223, 12353]
    },
    {
      "name": "features.10.conv.1.0",
      "kind": "conv",
      "shape": [384, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.4991319444444444,
      "p_pos": 0.5008680555555556,
      "counts": [0, 1725, 1731]
    },
    {
      "name": "features.10.conv.2",
      "kind": "conv",
      "shape": [64, 384, 1, 1],
      "p0": 0.0,
      "p_neg": 0.4861653645833333,
      "p_pos": 0.5138346354166666,
      "counts": [0, 11948, 12628]
    },
    {
      "name": "features.11.conv.0.0",
      "kind": "conv",
      "shape": [384, 64, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5142822265625,
      "p_pos": 0.4857177734375,
      "counts": [0, 12639, 11937]
    },
    {
      "name": "features.11.conv.1.0",
      "kind": "conv",
      "shape": [384, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5309606481481481,
      "p_pos": 0.46903935185185186,
      "counts": [0, 1835, 1621]
    },
    {
      "name": "features.11.conv.2",
      "kind": "conv",
      "shape": [96, 384, 1, 1],
      "p0": 0.0,
      "p_neg": 0.4952256944444444,
      "p_pos": 0.5047743055555556,
      "counts": [0, 18256, 18608]
    },
    {
      "name": "features.12.conv.0.0",
      "kind": "conv",
      "shape": [576, 96, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5017903645833334,
      "p_pos": 0.4982096354166667,
      "counts": [0, 27747, 27549]
    },
    {
      "name": "features.12.conv.1.0",
      "kind": "conv",
      "shape": [576, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5515046296296297,
      "p_pos": 0.44849537037037035,
      "counts": [0, 2859, 2325]
    },
    {
      "name": "features.12.conv.2",
      "kind": "conv",
      "shape": [96, 576, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5003255208333334,
      "p_pos": 0.4996744791666667,
      "counts": [0, 27666, 27630]
    },
    {
      "name": "features.13.conv.0.0",
      "kind": "conv",
      "shape": [576, 96, 1, 1],
      "p0": 0.0,
      "p_neg": 0.4988606770833333,
      "p_pos": 0.5011393229166666,
      "counts": [0, 27585, 27711]
    },
    {
      "name": "features.13.conv.1.0",
      "kind": "conv",
      "shape": [576, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5165895061728395,
      "p_pos": 0.4834104938271605,
      "counts": [0, 2678, 2506]
    },
    {
      "name": "features.13.conv.2",
      "kind": "conv",
      "shape": [96, 576, 1, 1],
      "p0": 0.0,
      "p_neg": 0.4995659722222222,
      "p_pos": 0.5004340277777778,
      "counts": [0, 27624, 27672]
    },
    {
      "name": "features.14.conv.0.0",
      "kind": "conv",
      "shape": [576, 96, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5102358217592593,
      "p_pos": 0.48976417824074076,
      "counts": [0, 28214, 27082]
    },
    {
      "name": "features.14.conv.1.0",
      "kind": "conv",
      "shape": [576, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.4068287037037037,
      "p_pos": 0.5931712962962963,
      "counts": [0, 2109, 3075]
    },
    {
      "name": "features.14.conv.2",
      "kind": "conv",
      "shape": [160, 576, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5010525173611111,
      "p_pos": 0.4989474826388889,
      "counts": [0, 46177, 45983]
    },
    {
      "name": "features.15.conv.0.0",
      "kind": "conv",
      "shape": [960, 160, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5002864583333333,
      "p_pos": 0.49971354166666665,
      "counts": [0, 76844, 76756]
    },
    {
      "name": "features.15.conv.1.0",
      "kind": "conv",
      "shape": [960, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.596412037037037,
      "p_pos": 0.40358796296296295,
      "counts": [0, 5153, 3487]
    },
    {
      "name": "features.15.conv.2",
      "kind": "conv",
      "shape": [160, 960, 1, 1],
      "p0": 0.0,
      "p_neg": 0.4988671875,
      "p_pos": 0.5011328125,
      "counts": [0, 76626, 76974]
    },
    {
      "name": "features.16.conv.0.0",
      "kind": "conv",
      "shape": [960, 160, 1, 1],
      "p0": 0.0,
      "p_neg": 0.4983138020833333,
      "p_pos": 0.5016861979166667,
      "counts": [0, 76541, 77059]
    },
    {
      "name": "features.16.conv.1.0",
      "kind": "conv",
      "shape": [960, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.5115740740740741,
      "p_pos": 0.48842592592592593,
      "counts": [0, 4420, 4220]
    },
    {
      "name": "features.16.conv.2",
      "kind": "conv",
      "shape": [160, 960, 1, 1],
      "p0": 0.0,
      "p_neg": 0.5018359375,
      "p_pos": 0.4981640625,
      "counts": [0, 77082, 76518]
    },
    {
      "name": "features.17.conv.0.0",
      "kind": "conv",
      "shape": [960, 160, 1, 1],
      "p0": 0.0,
      "p_neg": 0.48998046875,
      "p_pos": 0.51001953125,
      "counts": [0, 75261, 78339]
    },
    {
      "name": "features.17.conv.1.0",
      "kind": "conv",
      "shape": [960, 1, 3, 3],
      "p0": 0.0,
      "p_neg": 0.42256944444444444,
      "p_pos": 0.5774305555555556,
      "counts": [0, 3651, 4989]
    },
    {
      "name": "features.17.conv.2",
      "kind": "conv",
      "shape": [320, 960, 1, 1],
      "p0": 0.0,
      "p_neg": 0.49958984375,
      "p_pos": 0.50041015625,
      "counts": [0, 153474, 153726]
    },
    {
      "name": "features.18.0",
      "kind": "conv",
      "shape": [1280, 320, 1, 1],
      "p0": 0.0,
      "p_neg": 0.50336669921875,
      "p_pos": 0.49663330078125,
      "counts": [0, 206179, 203421]
    }
  ],
  "source": {
    "file": "mobilenet_v2-b0353104.pth",
    "format": "pytorch",
    "id": "mobilenet_v2-b0353104.pth",
    "sha256": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    "type": "file"
  },
  "extraction": {
    "expand_groups": false,
    "groups": {},
    "include_linear": false,
    "layers": null,
    "layout": "OIHW",
    "source_layout": "auto",
    "source_layout_detected": "OIHW",
    "zero_tol": 0.0
  },
  "producer": {
    "name": "polarpack",
    "version": "0.1.0"
  },
  "metadata": {}
}
