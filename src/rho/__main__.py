from rho.cli import main

raise SystemExit(main())
